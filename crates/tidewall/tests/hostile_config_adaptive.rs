#![cfg(all(feature = "toml", feature = "test-util"))]
//! Hostile black-box tests of adaptive limiters configured by name, written from the rustdoc
//! alone: the `[<layer>.adaptive]` section's per-algorithm keys, CoDel keys, layering and key
//! paths; the registry's limiter, list and pipeline stage (`Either`); reloads with permits
//! held and waiters queued (what relearns and what keeps what it learned, refusals that change
//! nothing); `reconfigure`; cancellation at seeded points; long idle gaps in virtual time;
//! serialization round trips; `validate` against the registry on seeded random files; and
//! (feature `metrics`) the adaptive gauges.

mod support;

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tidewall::adaptive::{AdaptivePermit, Priority};
use tidewall::admission::{Admission, Either, Wait};
use tidewall::breaker::Outcome;
use tidewall::bulkhead::Bulkhead;
use tidewall::config::{
    AlgorithmKind, Config, ConfiguredAdaptive, DisciplineKind, Invalid, Problem, Registry,
};
use tidewall::telemetry::EventKind;
use tidewall::testing::FakeClock;
use tidewall::{Deadline, Error, Name, Rejected};
use tidewall_core::adaptive::{
    Aimd, AnyAlgorithm, FixedLimit, Gradient2, LimitAlgorithm, Sample, Vegas, WindowedGradient,
};
use tidewall_core::rng::SplitMix64;

// === shared pieces =========================================================================

const HOUR: Duration = Duration::from_secs(3_600);
const YEAR: Duration = Duration::from_secs(365 * 86_400);
const CENTURY: Duration = Duration::from_secs(100 * 365 * 86_400);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Seeded draws from the library's own generator: every run draws the same numbers.
struct Rng(SplitMix64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(SplitMix64::new(seed))
    }
    fn below(&mut self, n: usize) -> usize {
        let max = u64::try_from(n - 1).unwrap();
        usize::try_from(self.0.below_or_equal(max)).unwrap()
    }
    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

fn config(text: &str) -> Config {
    Config::from_toml(text).unwrap_or_else(|e| panic!("must be accepted: {e}\n---\n{text}"))
}

fn refused(text: &str) -> Invalid {
    match Config::from_toml(text) {
        Ok(c) => panic!("must be refused, was accepted as {c:?}\n---\n{text}"),
        Err(e) => e,
    }
}

/// Parsed without validation (as another serde format would read it).
fn unchecked(text: &str) -> Config {
    toml::from_str(text).unwrap_or_else(|e| panic!("must parse: {e}\n---\n{text}"))
}

fn on_clock(clock: &FakeClock, text: &str) -> Registry<FakeClock> {
    Registry::builder(config(text))
        .runtime(clock.clone())
        .build()
        .unwrap_or_else(|e| panic!("registry refused: {e}\n---\n{text}"))
}

fn names(list: &[Name]) -> Vec<String> {
    list.iter().map(ToString::to_string).collect()
}

type Limiter = ConfiguredAdaptive<FakeClock>;
type Permit = AdaptivePermit<AnyAlgorithm, FakeClock>;
type Waiting = Pin<Box<dyn Future<Output = Result<Permit, Rejected>> + Send>>;

fn poll<F: Future + ?Sized>(future: Pin<&mut F>) -> Poll<F::Output> {
    future.poll(&mut Context::from_waker(Waker::noop()))
}

/// A caller of `priority` that waits with no deadline, polled once: it must have queued.
fn queued(limiter: &Limiter, priority: Priority) -> Waiting {
    let mut future: Waiting = Box::pin(
        limiter
            .with_priority(priority)
            .admit(Wait::Until(Deadline::none())),
    );
    let first = poll(future.as_mut());
    assert!(
        first.is_pending(),
        "{priority:?} should queue, got {first:?}"
    );
    future
}

fn admitted(future: &mut Waiting) -> Option<Permit> {
    match poll(future.as_mut()) {
        Poll::Pending => None,
        Poll::Ready(Ok(permit)) => Some(permit),
        Poll::Ready(Err(e)) => panic!("a waiter was refused: {e:?}"),
    }
}

fn hold(limiter: &Limiter, priority: Priority, n: usize) -> Vec<Permit> {
    let handle = limiter.with_priority(priority);
    (0..n)
        .map(|i| {
            handle
                .try_acquire()
                .unwrap_or_else(|e| panic!("{priority:?} #{i} of {n}: {e:?}"))
        })
        .collect()
}

/// How many calls of `priority` are admitted now, all released afterwards.
fn room(limiter: &Limiter, priority: Priority) -> usize {
    let handle = limiter.with_priority(priority);
    let mut held = Vec::new();
    while let Ok(p) = handle.try_acquire() {
        held.push(p);
        assert!(held.len() <= 100_000, "runaway admission");
    }
    held.len()
}

fn settled(limiter: &Limiter) {
    assert_eq!(
        (limiter.in_flight(), limiter.queued()),
        (0, 0),
        "{}: everything came back",
        limiter.name()
    );
}

/// Every algorithm and its own keys, with a valid value and another valid value each.
/// A key and two valid values of it.
type Key = (&'static str, &'static str, &'static str);

const ALGORITHMS: [(&str, &[Key]); 4] = [
    (
        "aimd",
        &[
            ("backoff_ratio", "0.5", "0.6"),
            ("timeout", "\"5s\"", "\"6s\""),
        ],
    ),
    (
        "vegas",
        &[
            ("smoothing", "1.0", "0.5"),
            ("alpha", "3", "2"),
            ("beta", "6", "7"),
            ("probe_multiplier", "30", "20"),
            ("seed", "1", "2"),
        ],
    ),
    (
        "gradient2",
        &[
            ("smoothing", "1.0", "0.5"),
            ("queue_size", "4", "5"),
            ("long_window", "600", "500"),
            ("rtt_tolerance", "1.5", "2.0"),
        ],
    ),
    (
        "windowed_gradient",
        &[
            ("window", "50", "40"),
            ("buffer", "0.25", "0.5"),
            ("probe_samples", "1", "2"),
            ("probe_interval", "\"60s\"", "\"30s\""),
        ],
    ),
];

/// Every algorithm-specific key, once (smoothing is shared by two).
fn all_algorithm_keys() -> Vec<(&'static str, &'static str, &'static str)> {
    let mut seen = BTreeSet::new();
    let mut keys = Vec::new();
    for (_, own) in ALGORITHMS {
        for &(key, a, b) in own {
            if seen.insert(key) {
                keys.push((key, a, b));
            }
        }
    }
    keys
}

fn own_keys(algorithm: &str) -> BTreeSet<&'static str> {
    ALGORITHMS
        .iter()
        .find(|(name, _)| *name == algorithm)
        .map(|(_, own)| own.iter().map(|(k, _, _)| *k).collect())
        .unwrap()
}

// === the section's keys ====================================================================

/// Doc (AdaptiveConfig): the table of each algorithm's keys; "Every algorithm takes
/// `initial_limit`, `min_limit` and `max_limit`". (Instance::adaptive_limiter): "the algorithm
/// the layers name, with their keys for it". (WindowedGradient): "It starts by measuring the
/// no-load RTT, at min_limit".
#[test]
fn every_algorithm_takes_all_its_keys_and_builds_at_its_initial_limit() {
    let kinds = [
        ("aimd", AlgorithmKind::Aimd),
        ("vegas", AlgorithmKind::Vegas),
        ("gradient2", AlgorithmKind::Gradient2),
        ("windowed_gradient", AlgorithmKind::WindowedGradient),
    ];
    let clock = FakeClock::new();
    for ((algorithm, own), (written, kind)) in ALGORITHMS.iter().zip(kinds) {
        assert_eq!(*algorithm, written);
        let mut text = format!(
            "[instances.a.adaptive]\nalgorithm = \"{algorithm}\"\nmin_limit = 2\ninitial_limit = 7\nmax_limit = 90\n"
        );
        for (key, value, _) in *own {
            text.push_str(&format!("{key} = {value}\n"));
        }
        let c = config(&text);
        let section = c.instances["a"].adaptive.as_ref().unwrap();
        assert_eq!(section.algorithm, Some(kind));
        let built = c
            .instance("a")
            .unwrap()
            .adaptive_limiter()
            .unwrap()
            .runtime(clock.clone())
            .build()
            .unwrap();
        let expected = if *algorithm == "windowed_gradient" {
            2
        } else {
            7
        };
        assert_eq!(
            (built.name(), built.limit()),
            ("a", expected),
            "{algorithm}"
        );
        let registry = on_clock(&clock, &text);
        let held = registry.adaptive_limiter("a").unwrap();
        assert_eq!((held.name(), held.limit()), ("a", expected), "{algorithm}");
    }
}

/// Doc (AdaptiveConfig): "a layer that names an algorithm may set only that algorithm's keys";
/// (Instance::adaptive_limiter): "[`Problem::NotHere`] for a key of another algorithm ... in a
/// layer that names its own". Every pair, in every kind of layer, at the key's own path.
#[test]
fn a_layer_naming_an_algorithm_refuses_each_key_of_every_other_algorithm() {
    let mut pairs = 0;
    for (algorithm, _) in ALGORITHMS {
        let own = own_keys(algorithm);
        for (key, value, _) in all_algorithm_keys() {
            if own.contains(key) {
                continue;
            }
            for (layer, extra) in [
                ("defaults", ""),
                ("configs.b", ""),
                ("instances.a", ""),
                ("instances.\"api.v2\"", ""),
                (
                    "instances.c",
                    "[instances.c]\nbase = \"x\"\n[configs.x.adaptive]\n",
                ),
            ] {
                let text = format!(
                    "{extra}[{layer}.adaptive]\nalgorithm = \"{algorithm}\"\n{key} = {value}\n"
                );
                let e = refused(&text);
                assert!(
                    matches!(e.problem(), Problem::NotHere(_)),
                    "{algorithm}/{key} in {layer}: {e:?}"
                );
                assert_eq!(e.path(), format!("{layer}.adaptive.{key}"), "{e}");
                pairs += 1;
            }
        }
    }
    assert!(pairs > 50);
}

/// Doc (AdaptiveConfig): "(across layers, the defaults may give keys only some instances'
/// algorithms use)"; a base that names its algorithm is a layer too, and an instance naming
/// another over it sets no foreign key itself.
#[test]
fn across_layers_keys_of_other_algorithms_are_fine_and_each_instance_builds() {
    let mut text =
        String::from("[defaults.adaptive]\nmin_limit = 1\ninitial_limit = 9\nmax_limit = 99\n");
    for (key, value, _) in all_algorithm_keys() {
        text.push_str(&format!("{key} = {value}\n"));
    }
    text.push_str("[configs.loss.adaptive]\nalgorithm = \"aimd\"\ntimeout = \"1s\"\n");
    // An instance layer that names no algorithm may set any algorithm's keys over its base's.
    text.push_str("[instances.inherits]\nbase = \"loss\"\n[instances.inherits.adaptive]\nwindow = 4\nalpha = 2\n");
    for (algorithm, _) in ALGORITHMS {
        text.push_str(&format!(
            "[instances.{algorithm}]\nbase = \"loss\"\n[instances.{algorithm}.adaptive]\nalgorithm = \"{algorithm}\"\n"
        ));
    }
    let c = config(&text);
    c.validate().unwrap();
    let clock = FakeClock::new();
    let registry = Registry::builder(c).runtime(clock).build().unwrap();
    let listed: BTreeSet<String> = registry
        .adaptive_limiters()
        .into_iter()
        .map(|(n, _)| n.to_string())
        .collect();
    let mut expected: BTreeSet<String> = ALGORITHMS.iter().map(|(a, _)| (*a).to_owned()).collect();
    expected.insert("inherits".to_owned());
    assert_eq!(
        listed, expected,
        "every declared limiter is there to list from the start"
    );
    for (algorithm, _) in ALGORITHMS {
        let l = registry.adaptive_limiter(algorithm).unwrap();
        assert!(
            l.limit() >= 1 && l.limit() <= 99,
            "{algorithm}: {}",
            l.limit()
        );
    }
}

/// Doc (Instance::adaptive_limiter): "[`Problem::NotHere`] for ... a CoDel key without
/// `discipline = "codel"` in a layer that names its own"; "CoDel's durations only next to
/// `discipline = "codel"` (when it names a discipline)".
#[test]
fn codel_keys_only_next_to_codel_in_a_layer_that_names_a_discipline() {
    for layer in ["defaults", "configs.b", "instances.a"] {
        for discipline in ["fifo", "lifo"] {
            for key in ["codel_target", "codel_interval"] {
                let e = refused(&format!(
                    "[{layer}.adaptive]\nalgorithm = \"aimd\"\ndiscipline = \"{discipline}\"\n{key} = \"5ms\"\n"
                ));
                assert!(matches!(e.problem(), Problem::NotHere(_)), "{e:?}");
                assert_eq!(e.path(), format!("{layer}.adaptive.{key}"), "{e}");
            }
        }
    }
    // Next to codel, and across layers in either direction: accepted and built.
    for text in [
        "[instances.a.adaptive]\nalgorithm = \"aimd\"\nmax_queue = 2\ndiscipline = \"codel\"\ncodel_target = \"7ms\"\ncodel_interval = \"70ms\"\n",
        "[defaults.adaptive]\ncodel_target = \"7ms\"\ncodel_interval = \"70ms\"\n[instances.a.adaptive]\nalgorithm = \"aimd\"\nmax_queue = 2\ndiscipline = \"codel\"\n",
        "[defaults.adaptive]\ndiscipline = \"codel\"\n[instances.a.adaptive]\nalgorithm = \"aimd\"\nmax_queue = 2\ncodel_target = \"1ms\"\n",
        // A layer that names no discipline may set them; the defaults' fifo does not make
        // them a mistake in another layer.
        "[defaults.adaptive]\ndiscipline = \"fifo\"\n[instances.a.adaptive]\nalgorithm = \"aimd\"\ncodel_interval = \"1s\"\n",
    ] {
        let c = config(text);
        let clock = FakeClock::new();
        let registry = Registry::builder(c).runtime(clock).build().unwrap();
        registry.adaptive_limiter("a").unwrap();
    }
    let c = config("[instances.a.adaptive]\nalgorithm = \"aimd\"\ndiscipline = \"lifo\"\n");
    let section = c.instances["a"].adaptive.as_ref().unwrap();
    assert_eq!(section.discipline, Some(DisciplineKind::Lifo));
    // Zero CoDel durations break the discipline's rule, at their key.
    for key in ["codel_target", "codel_interval"] {
        let e = refused(&format!(
            "[instances.a.adaptive]\nalgorithm = \"aimd\"\ndiscipline = \"codel\"\n{key} = \"0s\"\n"
        ));
        assert_eq!(e.path(), format!("instances.a.adaptive.{key}"), "{e}");
        assert!(matches!(e.problem(), Problem::Rule(_)), "{e:?}");
    }
}

/// Doc (AdaptiveConfig): "`algorithm` has no default: some layer must choose one";
/// (Config::validate): "The defaults and a config may leave out keys that have no default (an
/// instance sets them); an instance that has a section, itself or through its base, may not";
/// (Registry::adaptive_limiter): "[`Problem::Missing`] when no layer sets `algorithm`".
#[test]
fn algorithm_must_be_set_by_some_layer_of_an_instance_that_has_the_section() {
    for text in [
        "[instances.a.adaptive]\n",
        "[instances.a.adaptive]\ninitial_limit = 5\n",
        "[configs.b.adaptive]\nmax_queue = 3\n[instances.a]\nbase = \"b\"\n",
        "[defaults.adaptive]\ntimeout = \"1s\"\n[configs.b.adaptive]\n[instances.a]\nbase = \"b\"\nadaptive = {}\n",
    ] {
        let e = refused(text);
        assert!(matches!(e.problem(), Problem::Missing), "{e:?}\n{text}");
        // Where the section is: the instance's, else its base's.
        let at = if text.contains("adaptive = {}") || text.contains("[instances.a.adaptive]") {
            "instances.a.adaptive.algorithm"
        } else {
            "configs.b.adaptive.algorithm"
        };
        assert_eq!(e.path(), at, "{text}");
        assert_eq!(unchecked(text).validate().unwrap_err(), e);
        assert_eq!(Registry::new(unchecked(text)).unwrap_err(), e, "{text}");
    }
    // Layers that only fill in: no instance has the section, so nothing is missing.
    let c = config(
        "[defaults.adaptive]\ninitial_limit = 5\n[configs.b.adaptive]\nmax_queue = 1\n[instances.a.breaker]\n",
    );
    let clock = FakeClock::new();
    let registry = Registry::builder(c.clone()).runtime(clock).build().unwrap();
    assert!(registry.adaptive_limiters().is_empty());
    // Asked for anyway: the defaults alone do not make one.
    for name in ["a", "ghost"] {
        let e = registry.adaptive_limiter(name).unwrap_err();
        assert!(matches!(e.problem(), Problem::Missing), "{name}: {e:?}");
        let e = c
            .instance(name)
            .unwrap()
            .adaptive_limiter()
            .err()
            .expect("no algorithm");
        assert!(matches!(e.problem(), Problem::Missing), "{name}: {e:?}");
    }
    assert!(
        registry.adaptive_limiters().is_empty(),
        "a refusal keeps nothing"
    );
    // A base or the defaults may name it.
    for text in [
        "[configs.b.adaptive]\nalgorithm = \"vegas\"\n[instances.a]\nbase = \"b\"\n[instances.a.adaptive]\ninitial_limit = 5\n",
        "[defaults.adaptive]\nalgorithm = \"vegas\"\n[instances.a.adaptive]\ninitial_limit = 5\n",
    ] {
        let registry = on_clock(&FakeClock::new(), text);
        assert_eq!(registry.adaptive_limiter("a").unwrap().limit(), 5);
    }
}

/// Doc (Invalid): "the key path of what is wrong"; (Instance::adaptive_limiter): "[`Invalid`]
/// with the key path of a setting the builders refuse"; each builder's documented rules.
#[test]
fn each_builder_rule_is_reported_at_the_key_and_layer_that_set_it() {
    let cases: &[(&str, &str, &str)] = &[
        ("aimd", "backoff_ratio", "1.0"),
        ("aimd", "backoff_ratio", "0.49"),
        ("aimd", "backoff_ratio", "nan"),
        ("aimd", "timeout", "\"0s\""),
        ("vegas", "smoothing", "0.0"),
        ("vegas", "smoothing", "1.5"),
        ("vegas", "smoothing", "-0.5"),
        ("vegas", "smoothing", "inf"),
        ("vegas", "probe_multiplier", "0"),
        ("gradient2", "smoothing", "0.0"),
        ("gradient2", "long_window", "0"),
        ("gradient2", "rtt_tolerance", "0.5"),
        ("gradient2", "rtt_tolerance", "nan"),
        ("windowed_gradient", "window", "0"),
        ("windowed_gradient", "probe_samples", "0"),
        ("windowed_gradient", "probe_interval", "\"0s\""),
        ("windowed_gradient", "buffer", "-1.0"),
        ("windowed_gradient", "buffer", "inf"),
        ("vegas", "min_limit", "0"),
        ("aimd", "default_share", "0.0"),
        ("aimd", "default_share", "nan"),
        ("aimd", "default_share", "1.5"),
        ("aimd", "sheddable_share", "nan"),
        ("aimd", "sheddable_share", "-inf"),
        ("aimd", "sheddable_share", "0.0"),
    ];
    for &(algorithm, key, value) in cases {
        // Set in the instance.
        let e = refused(&format!(
            "[instances.a.adaptive]\nalgorithm = \"{algorithm}\"\n{key} = {value}\n"
        ));
        assert_eq!(
            e.path(),
            format!("instances.a.adaptive.{key}"),
            "{algorithm} {key}={value}: {e}"
        );
        assert!(matches!(e.problem(), Problem::Rule(_)), "{e:?}");
        // Set in a base the instance names.
        let e = refused(&format!(
            "[configs.b.adaptive]\n{key} = {value}\n[instances.a]\nbase = \"b\"\n[instances.a.adaptive]\nalgorithm = \"{algorithm}\"\n"
        ));
        assert_eq!(
            e.path(),
            format!("configs.b.adaptive.{key}"),
            "{algorithm} {key}={value}: {e}"
        );
        // Set in the defaults, with no algorithm named there (the neutral check).
        let e = refused(&format!("[defaults.adaptive]\n{key} = {value}\n"));
        assert_eq!(
            e.path(),
            format!("defaults.adaptive.{key}"),
            "{key}={value}: {e}"
        );
    }
    // A quoted instance name reads back unambiguously.
    let e = refused("[instances.\"api.v2\".adaptive]\nalgorithm = \"aimd\"\ntimeout = \"0s\"\n");
    assert_eq!(e.path(), "instances.\"api.v2\".adaptive.timeout");
}

/// Doc (AdaptiveLimiterBuilder::share): "a less important priority never more than a more
/// important one"; (Instance): "settings that contradict each other wait for the instance that
/// completes them"; (Invalid::is_conflict doc): contradictions "as far as they go".
#[test]
fn shares_that_contradict_wait_for_the_instance_and_are_refused_there() {
    // The defaults lower default_share below sheddable's builder default of 0.8: another
    // layer could still make it right.
    let text = "[defaults.adaptive]\ndefault_share = 0.5\n";
    config(text);
    // An instance that settles it.
    let ok = format!("{text}[instances.a.adaptive]\nalgorithm = \"aimd\"\nsheddable_share = 0.4\n");
    let registry = on_clock(&FakeClock::new(), &ok);
    assert_eq!(registry.adaptive_limiter("a").unwrap().limit(), 20);
    // An instance that does not.
    let bad = format!("{text}[instances.a.adaptive]\nalgorithm = \"aimd\"\n");
    let e = refused(&bad);
    assert!(e.path().starts_with("instances.a.adaptive"), "{e}");
    assert!(matches!(e.problem(), Problem::Rule(_)), "{e:?}");
    assert_eq!(Registry::new(unchecked(&bad)).unwrap_err(), e);
    // There is no critical share to set: critical calls always have the whole limit.
    let e = refused("[instances.a.adaptive]\nalgorithm = \"aimd\"\ncritical_share = 1.0\n");
    assert!(matches!(e.problem(), Problem::Syntax(_)), "{e:?}");
}

/// Doc (config module): "Unknown keys are errors"; (AlgorithmKind/DisciplineKind) the names
/// the table writes. Values of the wrong kind or out of their type's range are the parser's.
#[test]
fn names_are_exact_and_out_of_range_integers_are_syntax_errors() {
    for (key, value) in [
        ("algorithm", "\"AIMD\""),
        ("algorithm", "\"windowed-gradient\""),
        ("algorithm", "\"fixed\""),
        ("algorithm", "\"gradient\""),
        ("discipline", "\"FIFO\""),
        ("discipline", "\"red\""),
        ("initial_limit", "4294967296"),
        ("initial_limit", "-1"),
        ("max_limit", "1.5"),
        ("max_queue", "-1"),
        ("seed", "-1"),
        ("timeout", "5"),
        ("max_wait", "\"on\""),
        ("backoff", "\"constant\""),
        ("limit", "5"),
    ] {
        let text = format!("[instances.a.adaptive]\n{key} = {value}\n");
        let text = if key == "algorithm" {
            text
        } else {
            format!("{text}algorithm = \"aimd\"\n")
        };
        let e = refused(&text);
        assert!(
            matches!(e.problem(), Problem::Syntax(_)),
            "{key} = {value}: {e:?}"
        );
    }
}

/// Doc (AdaptiveConfig): "The least the limit falls to (the algorithm's default; at least 1)";
/// (config module): "a configuration is exactly as strict as the builders: nothing is clamped".
/// Whatever the builder says about limits, the file says the same.
#[test]
fn limits_are_exactly_as_strict_as_the_algorithm_builders() {
    type Built = Result<u32, tidewall_core::ConfigError>;
    let limits: &[(Option<u32>, Option<u32>, Option<u32>)] = &[
        (Some(2), None, None),
        (Some(2), None, Some(100)),
        (Some(5), Some(10), None),
        (None, Some(500), None),
        (None, None, Some(10)),
        (Some(1), Some(1), Some(1)),
        (Some(u32::MAX), Some(1), Some(u32::MAX)),
        (Some(u32::MAX), None, Some(u32::MAX)),
        (Some(20), Some(20), Some(19)),
    ];
    fn direct(
        algorithm: &str,
        (initial, min, max): (Option<u32>, Option<u32>, Option<u32>),
    ) -> Built {
        macro_rules! with {
            ($b:expr) => {{
                let mut b = $b;
                if let Some(v) = min {
                    b = b.min_limit(v);
                }
                if let Some(v) = initial {
                    b = b.initial_limit(v);
                }
                if let Some(v) = max {
                    b = b.max_limit(v);
                }
                b.build().map(|a| AnyAlgorithm::from(a).limit())
            }};
        }
        match algorithm {
            "aimd" => with!(Aimd::builder()),
            "vegas" => with!(Vegas::builder()),
            "gradient2" => with!(Gradient2::builder()),
            _ => with!(WindowedGradient::builder()),
        }
    }
    for (algorithm, _) in ALGORITHMS {
        for &l in limits {
            let (initial, min, max) = l;
            let mut text = format!("[instances.a.adaptive]\nalgorithm = \"{algorithm}\"\n");
            for (key, v) in [
                ("initial_limit", initial),
                ("min_limit", min),
                ("max_limit", max),
            ] {
                if let Some(v) = v {
                    text.push_str(&format!("{key} = {v}\n"));
                }
            }
            let builder = direct(algorithm, l);
            let file = Config::from_toml(&text);
            assert_eq!(
                file.is_ok(),
                builder.is_ok(),
                "{algorithm} {l:?}: file {file:?}, builder {builder:?}"
            );
            if let (Ok(c), Ok(limit)) = (file, builder) {
                let built = c
                    .instance("a")
                    .unwrap()
                    .adaptive_limiter()
                    .unwrap()
                    .runtime(FakeClock::new())
                    .build()
                    .unwrap();
                assert_eq!(built.limit(), limit, "{algorithm} {l:?}");
            }
        }
    }
}

/// Extreme values: the largest limits, huge queues and durations are built or refused with a
/// typed error, never a panic; a limit of `u32::MAX` backs off without overflow.
#[test]
fn extreme_values_build_or_are_refused_never_panic() {
    let clock = FakeClock::new();
    let registry = on_clock(
        &clock,
        "[instances.a.adaptive]\nalgorithm = \"aimd\"\nmin_limit = 1\ninitial_limit = 4294967295\nmax_limit = 4294967295\nbackoff_ratio = 0.5\nsheddable_share = 0.000001\n",
    );
    let a = registry.adaptive_limiter("a").unwrap();
    assert_eq!(a.limit(), u32::MAX);
    // Fewer than 4294.967295 in flight: 4295 sheddable calls fit, not billions.
    assert_eq!(
        room(&a, Priority::Sheddable),
        4_295,
        "the share is a share of u32::MAX"
    );
    let held = a.try_acquire().unwrap();
    held.failure();
    assert_eq!(a.limit(), 2_147_483_647, "u32::MAX × 0.5, truncated");
    settled(&a);

    for (key, value) in [
        ("max_queue", "9223372036854775807"),
        ("max_wait", "\"5124095h\""),
        ("max_wait", "\"18446744073s\""),
        ("max_wait", "\"18446744074s\""),
        ("timeout", "\"5124095h\""),
        ("timeout", "\"18446744074s\""),
        ("timeout", "\"1ns\""),
        ("codel_target", "\"5124095h\""),
        ("codel_interval", "\"18446744074s\""),
        ("seed", "9223372036854775807"),
        ("probe_interval", "\"5124095h\""),
    ] {
        let algorithm = match key {
            "seed" => "vegas",
            "probe_interval" => "windowed_gradient",
            _ => "aimd",
        };
        let discipline = if key.starts_with("codel") {
            "discipline = \"codel\"\n"
        } else {
            ""
        };
        let queue = if key == "max_queue" {
            ""
        } else {
            "max_queue = 3\n"
        };
        let text = format!(
            "[instances.a.adaptive]\nalgorithm = \"{algorithm}\"\n{queue}{discipline}{key} = {value}\n"
        );
        match Config::from_toml(&text) {
            Ok(c) => {
                let clock = FakeClock::new();
                let registry = Registry::builder(c).runtime(clock.clone()).build().unwrap();
                let a = registry.adaptive_limiter("a").unwrap();
                let p = a.try_acquire().unwrap();
                clock.advance(CENTURY);
                p.success();
                let (lo, hi) = (1, 1000);
                assert!(
                    a.limit() >= lo && a.limit() <= hi,
                    "{key} = {value}: {}",
                    a.limit()
                );
                settled(&a);
            }
            Err(e) => assert!(
                e.path().is_empty() || e.path() == format!("instances.a.adaptive.{key}"),
                "{key} = {value}: refused at the wrong place: {e}"
            ),
        }
    }
}

// === layering ==============================================================================

/// Doc (config module): "An instance's value for a key is its own, else its base's, else the
/// defaults', else the policy builder's default"; "the defaults only fill sections in".
#[test]
fn each_key_comes_from_the_topmost_layer_that_sets_it() {
    let clock = FakeClock::new();
    let registry = on_clock(
        &clock,
        r#"
        [defaults.adaptive]
        algorithm = "aimd"
        min_limit = 1
        initial_limit = 10
        max_limit = 100
        max_queue = 1
        max_wait = "off"
        sheddable_share = 0.5
        [configs.b.adaptive]
        initial_limit = 20
        max_queue = 3
        [instances.own]
        base = "b"
        [instances.own.adaptive]
        initial_limit = 30
        sheddable_share = 0.1
        [instances.based]
        base = "b"
        [instances.plain.adaptive]
        [instances.unsectioned.breaker]
        "#,
    );
    let own = registry.adaptive_limiter("own").unwrap();
    let based = registry.adaptive_limiter("based").unwrap();
    let plain = registry.adaptive_limiter("plain").unwrap();
    assert_eq!((own.limit(), based.limit(), plain.limit()), (30, 20, 10));
    assert_eq!(room(&own, Priority::Sheddable), 3, "0.1 × 30");
    assert_eq!(room(&based, Priority::Sheddable), 10, "0.5 × 20");
    assert_eq!(room(&plain, Priority::Sheddable), 5, "0.5 × 10");
    // Queues: the base's 3, the defaults' 1.
    for (limiter, queue) in [(&based, 3), (&plain, 1), (&own, 3)] {
        let held = hold(
            limiter,
            Priority::Critical,
            usize::try_from(limiter.limit()).unwrap(),
        );
        let mut waiters: Vec<Waiting> = (0..queue)
            .map(|_| queued(limiter, Priority::Default))
            .collect();
        let mut over: Waiting = Box::pin(limiter.admit(Wait::Until(Deadline::none())));
        assert_eq!(
            poll(over.as_mut()).map(|r| r.map(drop)),
            Poll::Ready(Err(Rejected::BulkheadFull)),
            "{}: the queue holds {queue}",
            limiter.name()
        );
        // max_wait "off": an hour later they still wait.
        clock.advance(HOUR);
        for w in &mut waiters {
            assert!(admitted(w).is_none());
        }
        drop(waiters);
        drop(held);
        settled(limiter);
    }
    // The instance with no section of its own: built from the defaults on first use, then
    // listed.
    let before: Vec<String> = registry
        .adaptive_limiters()
        .iter()
        .map(|(n, _)| n.to_string())
        .collect();
    assert!(!before.contains(&"unsectioned".to_owned()), "{before:?}");
    assert_eq!(
        registry.adaptive_limiter("unsectioned").unwrap().limit(),
        10
    );
    assert_eq!(registry.adaptive_limiter("ghost").unwrap().limit(), 10);
    let after: BTreeSet<String> = registry
        .adaptive_limiters()
        .iter()
        .map(|(n, _)| n.to_string())
        .collect();
    for n in ["own", "based", "plain", "unsectioned", "ghost"] {
        assert!(after.contains(n), "{n} missing from {after:?}");
    }
}

/// Doc (AdaptiveConfig + config module): a base's `algorithm` is over the defaults'; a
/// windowed gradient starts at its `min_limit` (3 by default), AIMD at 20.
#[test]
fn deep_layering_each_setting_from_a_different_layer() {
    let text = r#"
        [defaults.adaptive]
        algorithm = "aimd"
        timeout = "1s"
        [configs.wg.adaptive]
        algorithm = "windowed_gradient"
        probe_samples = 2
        discipline = "codel"
        [instances.a]
        base = "wg"
        [instances.a.adaptive]
        codel_target = "1ms"
        max_queue = 2
        default_share = 0.9
        sheddable_share = 0.5
        [instances.b.adaptive]
        "#;
    let clock = FakeClock::new();
    let registry = on_clock(&clock, text);
    let a = registry.adaptive_limiter("a").unwrap();
    let b = registry.adaptive_limiter("b").unwrap();
    assert_eq!(
        a.limit(),
        3,
        "the base's windowed gradient, probing at its min_limit"
    );
    assert_eq!(b.limit(), 20, "the defaults' AIMD");
    let via_instance = config(text)
        .instance("a")
        .unwrap()
        .adaptive_limiter()
        .unwrap()
        .runtime(clock.clone())
        .build()
        .unwrap();
    assert_eq!(via_instance.limit(), a.limit());
    // Two probe samples at most min_limit in flight end the measurement.
    for _ in 0..2 {
        let p = a.try_acquire().unwrap();
        clock.advance(ms(10));
        p.success();
    }
    assert_eq!(
        a.limit(),
        20,
        "back to the windowed gradient's initial limit"
    );
}

/// Doc (Registry): "Policies are handles to shared state"; (adaptive_limiters): "Every
/// adaptive limiter so far, by name".
#[test]
fn the_registry_hands_out_one_shared_limiter_per_name() {
    let clock = FakeClock::new();
    let registry = on_clock(
        &clock,
        "[instances.b.adaptive]\nalgorithm = \"vegas\"\ninitial_limit = 3\n[instances.a.adaptive]\nalgorithm = \"aimd\"\nmin_limit = 1\ninitial_limit = 2\n[instances.c.bulkhead]\nmax_concurrent = 1\n",
    );
    let listed = registry.adaptive_limiters();
    let names: Vec<String> = listed.iter().map(|(n, _)| n.to_string()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(sorted, ["a", "b"], "{names:?}");
    let (_, listed_a) = listed.iter().find(|(n, _)| *n == "a").unwrap();
    let held = listed_a.try_acquire().unwrap();
    let a = registry.adaptive_limiter("a").unwrap();
    assert_eq!(a.in_flight(), 1);
    let again = registry.adaptive_limiter("a").unwrap();
    let _second = again.try_acquire().unwrap();
    assert!(a.try_acquire().is_err(), "one limit of 2 for every handle");
    drop(held);
    assert_eq!(
        registry.adaptive_limiters().len(),
        2,
        "asking again builds nothing"
    );
}

/// Doc (an instance may not have both, per the brief; Problem::NotHere "The key is not allowed
/// here"); a base's section counts as the instance's; the defaults' only fill in; `validate`,
/// `Registry::new` and `reload` refuse alike.
#[test]
fn an_instance_may_not_have_both_a_bulkhead_and_an_adaptive_limiter() {
    let both = [
        "[instances.a.bulkhead]\nmax_concurrent = 4\n[instances.a.adaptive]\nalgorithm = \"aimd\"\n",
        "[configs.b.adaptive]\nalgorithm = \"aimd\"\n[instances.a]\nbase = \"b\"\n[instances.a.bulkhead]\nmax_concurrent = 4\n",
        "[configs.b.bulkhead]\nmax_concurrent = 4\n[configs.b.adaptive]\nalgorithm = \"aimd\"\n[instances.a]\nbase = \"b\"\n",
        "[defaults.adaptive]\nalgorithm = \"aimd\"\n[instances.a]\nbulkhead = { max_concurrent = 1 }\nadaptive = {}\n",
    ];
    let clock = FakeClock::new();
    let registry = on_clock(
        &clock,
        "[instances.a.adaptive]\nalgorithm = \"aimd\"\nmin_limit = 1\ninitial_limit = 3\n",
    );
    let a = registry.adaptive_limiter("a").unwrap();
    let before = registry.config();
    for text in both {
        let e = refused(text);
        assert!(
            e.path().starts_with("instances.a") || e.path().starts_with("configs.b"),
            "{e}"
        );
        let c = unchecked(text);
        assert_eq!(c.validate().unwrap_err(), e);
        assert_eq!(Registry::new(c.clone()).unwrap_err(), e);
        assert_eq!(registry.reload(c).unwrap_err(), e);
        assert_eq!(
            *registry.config(),
            *before,
            "the old configuration stays whole"
        );
    }
    assert_eq!(a.limit(), 3);
    assert!(
        registry.bulkheads().is_empty(),
        "a refused reload builds nothing"
    );
    // Only the defaults' bulkhead: the instance limits with its adaptive limiter alone.
    let registry = on_clock(
        &clock,
        "[defaults.bulkhead]\nmax_concurrent = 1\n[instances.a.adaptive]\nalgorithm = \"aimd\"\nmin_limit = 1\ninitial_limit = 3\n",
    );
    assert!(
        registry.bulkheads().is_empty(),
        "the instance has no bulkhead"
    );
    assert_eq!(registry.adaptive_limiters().len(), 1);
}

// === the pipeline ==========================================================================

/// Doc (LivePipeline): "rate limit, bulkhead or adaptive limiter, retry ..., breaker ...
/// Its stages are the registry's policies of the same name"; (Admission::finish): failures
/// teach the adaptive stage; (Registry::adaptive_limiter): "reporting as `policy`
/// `adaptive` under this name".
#[tokio::test(start_paused = true)]
async fn the_pipeline_limits_with_the_registry_limiter_and_teaches_it() {
    let heard: Arc<Mutex<Vec<(String, String, Rejected)>>> = Arc::default();
    let log = Arc::clone(&heard);
    let registry = Registry::builder(config(
        "[instances.a.adaptive]\nalgorithm = \"aimd\"\nmin_limit = 1\ninitial_limit = 4\nbackoff_ratio = 0.5\ntimeout = \"1s\"\n[instances.a.retry]\nmax_attempts = 1\n",
    ))
    .on_event(move |event| {
        if let EventKind::Rejected(why) = event.kind {
            log.lock()
                .unwrap()
                .push((event.policy.to_owned(), event.name.to_owned(), *why));
        }
    })
    .build()
    .unwrap();
    let pipeline = registry.pipeline("a").unwrap();
    let a = registry.adaptive_limiter("a").unwrap();

    let seen = pipeline
        .call(|| {
            let a = a.clone();
            async move { Ok::<_, ()>(a.in_flight()) }
        })
        .await;
    assert_eq!(
        seen,
        Ok(1),
        "the call held a slot of the registry's limiter"
    );
    let failed = pipeline.call(|| async { Err::<(), _>("overloaded") }).await;
    assert!(
        matches!(failed, Err(Error::Inner("overloaded"))),
        "{failed:?}"
    );
    assert_eq!(a.limit(), 2, "a failure is a drop: 4 × 0.5");
    let slow = pipeline
        .call(|| async {
            tokio::time::sleep(ms(1_500)).await;
            Ok::<_, ()>(())
        })
        .await;
    assert_eq!(slow, Ok(()));
    assert_eq!(a.limit(), 1, "slower than the timeout: a drop");

    let held = a.try_acquire().unwrap();
    let full = pipeline.call(|| async { Ok::<_, ()>(()) }).await;
    assert_eq!(full, Err(Error::Rejected(Rejected::BulkheadFull)));
    drop(held);
    assert_eq!(pipeline.call(|| async { Ok::<_, ()>(7) }).await, Ok(7));
    assert_eq!(a.in_flight(), 0);
    let heard = heard.lock().unwrap().clone();
    assert!(
        heard.iter().any(|(policy, name, why)| policy == "adaptive"
            && name == "a"
            && *why == Rejected::BulkheadFull),
        "the refusal counts as the adaptive limiter's of `a`: {heard:?}"
    );
}

/// Doc (adaptive module): in a pipeline, "as its bulkhead, told how each call ended: one
/// sample per call, retries included"; (Admission::finish): "[`Outcome::Ignored`] (... a
/// later stage's refusal: the dependency was not called)", and failures include "the deadline
/// running out during the call"; (Wait::Until): a waiter is refused with
/// `DeadlineExceeded` when the deadline passes.
#[tokio::test(start_paused = true)]
async fn the_configured_stage_learns_once_per_call_and_not_from_later_refusals() {
    let registry = Registry::new(config(
        r#"
        [instances.a]
        deadline = "1s"
        [instances.a.adaptive]
        algorithm = "aimd"
        min_limit = 1
        initial_limit = 8
        backoff_ratio = 0.5
        timeout = "1h"
        max_queue = 4
        max_wait = "off"
        [instances.a.retry]
        backoff = "constant"
        initial_delay = "10ms"
        jitter = "none"
        max_attempts = 3
        [instances.a.breaker]
        consecutive_failures = 3
        "#,
    ))
    .unwrap();
    let pipeline = registry.pipeline("a").unwrap();
    let a = registry.adaptive_limiter("a").unwrap();
    let mut attempts = 0;
    let r = pipeline
        .call(|| {
            attempts += 1;
            async { Err::<(), _>("down") }
        })
        .await;
    assert!(r.is_err());
    assert_eq!(
        (attempts, a.limit()),
        (3, 4),
        "three attempts, one drop: 8 × 0.5"
    );
    // The breaker opened on the third failure: its refusal teaches the limiter nothing.
    let r = pipeline.call(|| async { Ok::<_, &str>(()) }).await;
    assert!(matches!(r, Err(Error::Rejected(_))), "{r:?}");
    assert_eq!(a.limit(), 4, "a later stage's refusal is ignored");
    assert_eq!(a.in_flight(), 0);
    // Queued past the pipeline's deadline: refused, and out of the queue.
    let critical = a.with_priority(Priority::Critical);
    let held: Vec<_> = (0..4).map(|_| critical.try_acquire().unwrap()).collect();
    let r = pipeline.call(|| async { Ok::<_, &str>(()) }).await;
    assert_eq!(r, Err(Error::Rejected(Rejected::DeadlineExceeded)));
    assert_eq!((a.in_flight(), a.queued(), a.limit()), (4, 0, 4));
    drop(held);
}

/// Doc (reconfigure): "Its name, listener and runtime are not read: those stay"; (Registry::
/// reload) relearning limiters keep reporting to the registry's listener under their name.
#[tokio::test(start_paused = true)]
async fn a_relearning_reload_keeps_the_limiters_name_and_listener() {
    let heard: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let log = Arc::clone(&heard);
    let text = |initial: u32| {
        format!("[instances.a.adaptive]\nalgorithm = \"vegas\"\ninitial_limit = {initial}\n")
    };
    let registry = Registry::builder(config(&text(1)))
        .on_event(move |event| {
            if let EventKind::Rejected(_) = event.kind {
                log.lock()
                    .unwrap()
                    .push((event.policy.to_owned(), event.name.to_owned()));
            }
        })
        .build()
        .unwrap();
    let a = registry.adaptive_limiter("a").unwrap();
    let reload = registry.reload(config(&text(2))).unwrap();
    assert_eq!(names(&reload.relearning), ["a"]);
    let reload = registry
        .reload(config(
            "[instances.a.adaptive]\nalgorithm = \"aimd\"\nmin_limit = 1\ninitial_limit = 2\n",
        ))
        .unwrap();
    assert_eq!(names(&reload.relearning), ["a"]);
    let held = (a.try_acquire().unwrap(), a.try_acquire().unwrap());
    assert!(a.try_acquire().is_err());
    drop(held);
    assert_eq!(a.name(), "a");
    let heard = heard.lock().unwrap().clone();
    assert_eq!(
        heard,
        [("adaptive".to_owned(), "a".to_owned())],
        "{heard:?}"
    );
}

/// Doc (ConfiguredPipeline): "calls in flight limited by its bulkhead or its adaptive
/// limiter"; (LivePipeline): "A reload that adds or removes a section adds or removes the
/// stage". The defaults keep an algorithm, so the registry's limiter stays buildable.
#[tokio::test(start_paused = true)]
async fn a_reload_swapping_adaptive_for_bulkhead_swaps_the_in_flight_stage() {
    // The defaults keep an algorithm and a max_concurrent, so the registry's limiter and
    // bulkhead both stay buildable whichever section the instance has.
    let defaults = "[defaults.adaptive]\nalgorithm = \"aimd\"\nmin_limit = 1\ninitial_limit = 1\nmax_limit = 1\n[defaults.bulkhead]\nmax_concurrent = 1\nmax_queue = 0\n";
    let adaptive = &format!("{defaults}[instances.a]\nadaptive = {{}}\n");
    let bulkhead = &format!("{defaults}[instances.a]\nbulkhead = {{}}\n");
    let registry = Registry::new(config(adaptive)).unwrap();
    let pipeline = registry.pipeline("a").unwrap();
    let a = registry.adaptive_limiter("a").unwrap();
    let ok = || async { Ok::<_, ()>(()) };

    let held = a.try_acquire().unwrap();
    assert_eq!(
        pipeline.call(ok).await,
        Err(Error::Rejected(Rejected::BulkheadFull))
    );
    drop(held);

    registry.reload(config(bulkhead)).unwrap();
    let held = a.try_acquire().unwrap();
    assert_eq!(
        pipeline.call(ok).await,
        Ok(()),
        "the adaptive limiter is no stage now"
    );
    drop(held);
    let b = registry.bulkhead("a").unwrap();
    let held = b.try_acquire().unwrap();
    assert_eq!(
        pipeline.call(ok).await,
        Err(Error::Rejected(Rejected::BulkheadFull))
    );
    drop(held);

    registry.reload(config(adaptive)).unwrap();
    let held = b.try_acquire().unwrap();
    assert_eq!(
        pipeline.call(ok).await,
        Ok(()),
        "the bulkhead is no stage now"
    );
    drop(held);
    let seen = pipeline
        .call(|| {
            let (a, b) = (a.clone(), b.clone());
            async move { Ok::<_, ()>((a.in_flight(), b.in_flight(), a.limit())) }
        })
        .await;
    assert_eq!(
        seen,
        Ok((1, 0, 1)),
        "the registry's limiter is the stage again"
    );
    let held = a.try_acquire().unwrap();
    assert_eq!(
        pipeline.call(ok).await,
        Err(Error::Rejected(Rejected::BulkheadFull))
    );
    drop(held);
}

/// Doc (LivePipeline::call): "**Cancel safety:** ... dropping the future releases everything
/// it holds"; (adaptive module): "A call that was cancelled ... teaches the algorithm nothing".
/// Pipeline calls and direct waiters of every priority, dropped at seeded points, with
/// reloads (retuning and relearning) in between, in paused time.
#[tokio::test(start_paused = true)]
async fn pipeline_calls_dropped_at_seeded_points_leak_nothing_and_teach_nothing() {
    let text = |queue: usize, share: f64, max: u32| {
        format!(
            "[instances.a.adaptive]\nalgorithm = \"aimd\"\nmin_limit = 1\ninitial_limit = 4\nmax_limit = {max}\nmax_queue = {queue}\nmax_wait = \"off\"\nsheddable_share = {share}\n"
        )
    };
    let registry = Registry::new(config(&text(6, 0.5, 100))).unwrap();
    let pipeline = registry.pipeline("a").unwrap();
    let a = registry.adaptive_limiter("a").unwrap();
    type Call<'a> = Pin<Box<dyn Future<Output = Result<(), Rejected>> + 'a>>;
    for seed in 1..=30 {
        let mut rng = Rng::new(seed);
        let mut calls: Vec<Option<Call<'_>>> = Vec::new();
        for i in 0..14 {
            let call: Call<'_> = if i % 3 == 2 {
                let handle = a.with_priority(rng.pick(&Priority::ALL));
                Box::pin(async move {
                    let permit = handle.admit(Wait::Until(Deadline::none())).await?;
                    // Held until cancelled.
                    std::future::pending::<()>().await;
                    drop(permit);
                    Ok(())
                })
            } else {
                let p = &pipeline;
                Box::pin(async move {
                    p.call(|| async {
                        tokio::time::sleep(HOUR).await;
                        Ok::<_, ()>(())
                    })
                    .await
                    .map_err(|e| match e {
                        Error::Rejected(r) => r,
                        other => panic!("only refusals end early: {other:?}"),
                    })
                })
            };
            calls.push(Some(call));
        }
        for _ in 0..80 {
            let i = rng.below(calls.len());
            match rng.below(8) {
                0 => calls[i] = None,
                1..=4 => {
                    if let Some(call) = calls[i].as_mut()
                        && let Poll::Ready(r) = poll(call.as_mut())
                    {
                        assert!(r.is_err(), "nothing finishes in an hour of virtual time");
                        calls[i] = None;
                    }
                }
                5 | 6 => tokio::time::advance(ms(u64::try_from(rng.below(200)).unwrap())).await,
                _ => {
                    let queue = rng.pick(&[0, 2, 6]);
                    let share = rng.pick(&[0.25, 0.5, 1.0]);
                    let max = rng.pick(&[100, 100, 200]);
                    registry.reload(config(&text(queue, share, max))).unwrap();
                }
            }
            assert!(
                a.in_flight() <= 4,
                "seed {seed}: {} in flight",
                a.in_flight()
            );
        }
        drop(calls);
        assert_eq!(
            (a.in_flight(), a.queued()),
            (0, 0),
            "seed {seed}: everything came back"
        );
        assert_eq!(a.limit(), 4, "seed {seed}: cancelled calls teach nothing");
        let all = (0..4).map(|_| a.try_acquire().unwrap()).collect::<Vec<_>>();
        assert!(a.try_acquire().is_err());
        drop(all);
    }
}

/// Doc (LivePipeline): "a call started before it finishes on the settings it started with";
/// (reconfigure): "Calls in flight keep their slots, and their samples go to the new algorithm".
#[tokio::test(start_paused = true)]
async fn a_pipeline_call_in_flight_across_a_relearning_reload_keeps_its_slot() {
    let text = |initial: u32| {
        format!(
            "[instances.a.adaptive]\nalgorithm = \"aimd\"\nmin_limit = 1\ninitial_limit = {initial}\nbackoff_ratio = 0.5\n"
        )
    };
    let registry = Arc::new(Registry::new(config(&text(2))).unwrap());
    let pipeline = registry.pipeline("a").unwrap();
    let a = registry.adaptive_limiter("a").unwrap();
    let call = tokio::spawn({
        let pipeline = pipeline.clone();
        async move {
            pipeline
                .call(|| async {
                    tokio::time::sleep(ms(100)).await;
                    Err::<(), _>("fail")
                })
                .await
        }
    });
    tokio::time::sleep(ms(10)).await;
    assert_eq!(a.in_flight(), 1);
    let reload = registry.reload(config(&text(8))).unwrap();
    assert_eq!(names(&reload.relearning), ["a"]);
    assert_eq!((a.limit(), a.in_flight()), (8, 1), "the slot stays held");
    assert!(call.await.unwrap().is_err());
    assert_eq!(
        (a.limit(), a.in_flight()),
        (4, 0),
        "its failure taught the new algorithm"
    );
}

// === reloads ===============================================================================

/// Makes `limiter` learn something: afterwards its limit differs from a fresh one's.
fn learn(algorithm: &str, limiter: &Limiter, clock: &FakeClock) {
    match algorithm {
        "aimd" => limiter.try_acquire().unwrap().failure(),
        "vegas" => {
            let p = limiter.try_acquire().unwrap();
            clock.advance(ms(10));
            p.success(); // the no-load RTT
            let p = limiter.try_acquire().unwrap();
            clock.advance(ms(10));
            p.failure(); // a drop: one unit down
        }
        "gradient2" => {
            let n = usize::try_from(limiter.limit()).unwrap();
            let mut held = hold(limiter, Priority::Default, n);
            clock.advance(ms(10));
            held.pop().unwrap().failure(); // admitted with the whole limit in use
        }
        _ => {
            // The measurement of the no-load RTT ends after probe_samples (1) calls.
            let p = limiter.try_acquire().unwrap();
            clock.advance(ms(10));
            p.success();
        }
    }
}

fn learning_text(defaults: &str, algorithm: &str) -> String {
    format!(
        "[defaults.adaptive]\n{defaults}[instances.a.adaptive]\nalgorithm = \"{algorithm}\"\nmin_limit = 2\ninitial_limit = 20\nmax_limit = 100\n"
    )
}

/// Doc (Reload::relearning): "Adaptive limiters whose algorithm changed (its kind, limits or
/// keys) ... The others keep what they learned"; (AdaptiveConfig): "the defaults may give
/// keys only some instances' algorithms use". For each algorithm: changing a defaults key of
/// ANOTHER algorithm (or the limiter's queue, wait, discipline, CoDel keys, shares) keeps what
/// it learned; changing one of its own relearns.
#[test]
fn changing_only_another_algorithms_default_keys_does_not_relearn() {
    let baseline: Vec<(&str, &str, &str)> = all_algorithm_keys();
    let defaults_with = |changed: Option<&str>| {
        let mut s = String::new();
        for (key, a, b) in &baseline {
            let v = if Some(*key) == changed { b } else { a };
            s.push_str(&format!("{key} = {v}\n"));
        }
        s
    };
    let limiter_keys: &[(&str, &str)] = &[
        ("max_queue", "max_queue = 5\n"),
        ("max_wait", "max_wait = \"off\"\n"),
        ("discipline", "discipline = \"lifo\"\n"),
        ("codel_target", "codel_target = \"9ms\"\n"),
        ("shares", "default_share = 0.9\nsheddable_share = 0.3\n"),
    ];
    for (algorithm, _) in ALGORITHMS {
        let own = own_keys(algorithm);
        let clock = FakeClock::new();
        let registry = on_clock(&clock, &learning_text(&defaults_with(None), algorithm));
        let a = registry.adaptive_limiter("a").unwrap();
        let fresh = a.limit();
        learn(algorithm, &a, &clock);
        let learned = a.limit();
        assert_ne!(
            learned, fresh,
            "{algorithm}: the test must see what was learned"
        );
        for (key, _, _) in &baseline {
            if own.contains(key) {
                continue;
            }
            let reload = registry
                .reload(config(&learning_text(&defaults_with(Some(key)), algorithm)))
                .unwrap();
            assert!(
                reload.relearning.is_empty(),
                "{algorithm}: the defaults' {key} is not its key: {reload:?}"
            );
            assert_eq!(
                a.limit(),
                learned,
                "{algorithm} after the defaults' {key} changed"
            );
            registry
                .reload(config(&learning_text(&defaults_with(None), algorithm)))
                .unwrap();
            assert_eq!(a.limit(), learned, "{algorithm}: and back");
        }
        for (what, line) in limiter_keys {
            let text = learning_text(&format!("{}{line}", defaults_with(None)), algorithm);
            let reload = registry.reload(config(&text)).unwrap();
            assert!(
                reload.relearning.is_empty(),
                "{algorithm}: {what}: {reload:?}"
            );
            assert_eq!(a.limit(), learned, "{algorithm}: {what}");
        }
        // The same again, the value moved from the defaults to the instance: the merged
        // settings are the same.
        let first_own = own.iter().next().unwrap();
        let (_, value, _) = baseline.iter().find(|(k, _, _)| k == first_own).unwrap();
        let moved = format!(
            "{}{first_own} = {value}\n",
            learning_text(&defaults_with(None), algorithm)
        );
        let reload = registry.reload(config(&moved)).unwrap();
        assert!(
            reload.relearning.is_empty(),
            "{algorithm}: {first_own} moved: {reload:?}"
        );
        assert_eq!(a.limit(), learned);
        registry
            .reload(config(&learning_text(&defaults_with(None), algorithm)))
            .unwrap();
        // Each own key, changed in the defaults: it relearns.
        for key in &own {
            learn(algorithm, &a, &clock);
            let learned = a.limit();
            assert_ne!(learned, fresh, "{algorithm}");
            let reload = registry
                .reload(config(&learning_text(&defaults_with(Some(key)), algorithm)))
                .unwrap();
            assert_eq!(
                names(&reload.relearning),
                ["a"],
                "{algorithm}: its own {key} changed"
            );
            assert_eq!(
                a.limit(),
                fresh,
                "{algorithm}: from the initial limit again ({key})"
            );
            registry
                .reload(config(&learning_text(&defaults_with(None), algorithm)))
                .unwrap();
        }
        settled(&a);
    }
}

/// Doc (Reload::relearning): kind, limits or keys changed: "they start learning again from the
/// new initial limit"; (Registry::reload) nothing else relearns; new instances are `built`.
#[test]
fn a_reload_relearns_exactly_the_limiters_whose_algorithm_changed() {
    let base = r#"
        [defaults.adaptive]
        algorithm = "aimd"
        min_limit = 1
        backoff_ratio = 0.5
        [instances.kind.adaptive]
        initial_limit = 10
        [instances.initial.adaptive]
        initial_limit = 10
        [instances.min.adaptive]
        initial_limit = 10
        [instances.max.adaptive]
        initial_limit = 10
        [instances.own.adaptive]
        initial_limit = 10
        [instances.queue.adaptive]
        initial_limit = 10
        [instances.same.adaptive]
        initial_limit = 10
        "#;
    let changed =
        base.replacen(
            "[instances.kind.adaptive]\n",
            "[instances.kind.adaptive]\nalgorithm = \"vegas\"\n",
            1,
        )
        .replacen(
            "[instances.initial.adaptive]\n        initial_limit = 10",
            "[instances.initial.adaptive]\n        initial_limit = 11",
            1,
        )
        .replacen(
            "[instances.min.adaptive]\n",
            "[instances.min.adaptive]\nmin_limit = 2\n",
            1,
        )
        .replacen(
            "[instances.max.adaptive]\n",
            "[instances.max.adaptive]\nmax_limit = 150\n",
            1,
        )
        .replacen(
            "[instances.own.adaptive]\n",
            "[instances.own.adaptive]\ntimeout = \"2s\"\n",
            1,
        )
        .replacen(
            "[instances.queue.adaptive]\n",
            "[instances.queue.adaptive]\nmax_queue = 3\n",
            1,
        ) + "[instances.new.adaptive]\n";
    let clock = FakeClock::new();
    let registry = on_clock(&clock, base);
    let all: Vec<(Name, Limiter)> = registry.adaptive_limiters();
    assert_eq!(all.len(), 7);
    for (_, l) in &all {
        l.try_acquire().unwrap().failure();
        assert_eq!(l.limit(), 5);
    }
    let reload = registry.reload(config(&changed)).unwrap();
    let mut relearning = names(&reload.relearning);
    relearning.sort();
    assert_eq!(
        relearning,
        ["initial", "kind", "max", "min", "own"],
        "{reload:?}"
    );
    assert!(reload.built >= 1, "the new instance's limiter: {reload:?}");
    let limit = |n: &str| registry.adaptive_limiter(n).unwrap().limit();
    assert_eq!(limit("kind"), 10, "vegas from 10");
    assert_eq!(limit("initial"), 11);
    assert_eq!((limit("min"), limit("max"), limit("own")), (10, 10, 10));
    assert_eq!(
        (limit("queue"), limit("same")),
        (5, 5),
        "kept what they learned"
    );
    assert_eq!(limit("new"), 20, "built: AIMD's default initial limit");
    assert_eq!(registry.adaptive_limiters().len(), 8);
    // The identical file again: nothing relearns.
    let reload = registry.reload(config(&changed)).unwrap();
    assert!(reload.relearning.is_empty(), "{reload:?}");
    assert!(reload.reset.is_empty());
}

/// Doc (AdaptiveConfig, on the algorithm's settings "merged down the layers"): "A reload that
/// changes none of them keeps what a limiter learned". The same values written another way
/// (`"1s"` and `"1000ms"`, `0.5` and `5e-1`, keys in another order, the key moved to another
/// layer) are no change.
#[test]
fn the_same_settings_written_another_way_do_not_relearn() {
    let clock = FakeClock::new();
    let first = "[defaults.adaptive]\ntimeout = \"1s\"\nbackoff_ratio = 0.5\n[instances.a.adaptive]\nalgorithm = \"aimd\"\nmin_limit = 1\ninitial_limit = 10\nmax_limit = 100\n[instances.w.adaptive]\nalgorithm = \"windowed_gradient\"\nprobe_samples = 1\nprobe_interval = \"60s\"\nbuffer = 0.25\n";
    let registry = on_clock(&clock, first);
    let a = registry.adaptive_limiter("a").unwrap();
    let w = registry.adaptive_limiter("w").unwrap();
    learn("aimd", &a, &clock);
    learn("windowed_gradient", &w, &clock);
    let (la, lw) = (a.limit(), w.limit());
    assert_eq!((la, lw), (5, 20));
    for again in [
        "[defaults.adaptive]\ntimeout = \"1000ms\"\nbackoff_ratio = 5e-1\n[instances.a.adaptive]\nmax_limit = 100\ninitial_limit = 10\nmin_limit = 1\nalgorithm = \"aimd\"\n[instances.w.adaptive]\nalgorithm = \"windowed_gradient\"\nprobe_samples = 1\nprobe_interval = \"1m\"\nbuffer = 0.250\n",
        "[instances.w.adaptive]\nbuffer = 0.25\nprobe_interval = \"60000ms\"\nprobe_samples = 1\nalgorithm = \"windowed_gradient\"\n[instances.a.adaptive]\nalgorithm = \"aimd\"\ntimeout = \"1s\"\nbackoff_ratio = 0.5\nmin_limit = 1\ninitial_limit = 10\nmax_limit = 100\n",
        "[configs.x.adaptive]\nalgorithm = \"aimd\"\ntimeout = \"1s\"\nmin_limit = 1\n[defaults.adaptive]\nbackoff_ratio = 0.5\nprobe_samples = 1\n[instances.a]\nbase = \"x\"\n[instances.a.adaptive]\ninitial_limit = 10\nmax_limit = 100\n[instances.w.adaptive]\nalgorithm = \"windowed_gradient\"\nprobe_interval = \"60s\"\nbuffer = 0.25\n",
    ] {
        let reload = registry.reload(config(again)).unwrap();
        assert!(reload.relearning.is_empty(), "{reload:?}\n{again}");
        assert_eq!((a.limit(), w.limit()), (la, lw), "{again}");
    }
}

/// Doc (Reload::relearning): limiters "whose algorithm changed (another kind, or other
/// settings of its own: a default written out is no change): they start learning again ...
/// The others keep what they learned." Every default written out keeps what was learned.
#[test]
fn a_default_written_out_relearns_nothing() {
    let base = "[instances.a.adaptive]\nalgorithm = \"aimd\"\nmin_limit = 1\ninitial_limit = 10\n";
    for explicit in [
        "backoff_ratio = 0.9\n",
        "timeout = \"5s\"\n",
        "max_limit = 200\n",
        "discipline = \"fifo\"\n",
        "sheddable_share = 0.8\n",
    ] {
        let clock = FakeClock::new();
        let registry = on_clock(&clock, base);
        let a = registry.adaptive_limiter("a").unwrap();
        learn("aimd", &a, &clock);
        let learned = a.limit();
        let reload = registry
            .reload(config(&format!("{base}{explicit}")))
            .unwrap();
        assert!(reload.relearning.is_empty(), "{explicit}: {reload:?}");
        assert_ne!(learned, 10, "{explicit}: the limit had moved");
        assert_eq!(a.limit(), learned, "{explicit}: {reload:?}");
    }
}

/// Doc (Registry::reload): "an adaptive limiter takes its queue, wait, discipline and shares
/// in place, and keeps its algorithm and what it learned"; "calls in flight keep their
/// permits"; (reconfigure): "a limit below what is held admits nobody new, queued callers
/// included, until enough slots come back ... A larger share or limit admits queued callers at
/// once"; (Priority): "its queue serves the most important waiters first".
#[test]
fn reloads_with_permits_held_and_waiters_queued() {
    let text = |initial: u32, extra: &str| {
        format!(
            "[instances.a.adaptive]\nalgorithm = \"aimd\"\nmin_limit = 1\ninitial_limit = {initial}\nmax_limit = 100\nbackoff_ratio = 0.5\nmax_queue = 4\nmax_wait = \"off\"\n{extra}"
        )
    };
    let clock = FakeClock::new();
    let registry = on_clock(&clock, &text(4, ""));
    let a = registry.adaptive_limiter("a").unwrap();
    let mut held = hold(&a, Priority::Default, 4);
    let mut d1 = queued(&a, Priority::Default);
    let mut c1 = queued(&a, Priority::Critical);
    assert_eq!(a.queued(), 2);

    // Retuned in place: waiters and permits stay.
    let reload = registry
        .reload(config(&text(
            4,
            "discipline = \"lifo\"\nsheddable_share = 0.5\n",
        )))
        .unwrap();
    assert!(reload.relearning.is_empty(), "{reload:?}");
    assert_eq!((a.limit(), a.in_flight(), a.queued()), (4, 4, 2));

    // Relearning to a smaller limit revokes nothing.
    let reload = registry.reload(config(&text(2, ""))).unwrap();
    assert_eq!(names(&reload.relearning), ["a"]);
    assert_eq!((a.limit(), a.in_flight(), a.queued()), (2, 4, 2));
    assert!(a.with_priority(Priority::Critical).try_acquire().is_err());
    drop(held.pop());
    drop(held.pop());
    assert!(
        admitted(&mut c1).is_none() && admitted(&mut d1).is_none(),
        "2 of 2 in flight"
    );
    // A permit of the old algorithm ends: its sample goes to the new one (2 × 0.5).
    held.pop().unwrap().failure();
    assert_eq!((a.limit(), a.in_flight()), (1, 1));
    assert!(
        admitted(&mut c1).is_none() && admitted(&mut d1).is_none(),
        "1 of 1 in flight"
    );
    drop(held.pop());
    let c1_permit = admitted(&mut c1).expect("the critical waiter first");
    assert!(admitted(&mut d1).is_none());
    // A larger limit admits the queued caller at once.
    let reload = registry.reload(config(&text(10, ""))).unwrap();
    assert_eq!(names(&reload.relearning), ["a"]);
    let d1_permit = admitted(&mut d1).expect("admitted by the reload, not by a release");
    assert_eq!((a.in_flight(), a.queued()), (2, 0));
    drop((c1_permit, d1_permit));
    settled(&a);
}

/// Doc (Registry::reload): "an invalid configuration (or one under which a policy the registry
/// holds could not be built ...) is refused with its error, and the old one stays in force,
/// whole"; (Problem) the same error as `validate`.
#[test]
fn a_bad_reload_is_refused_whole_and_changes_no_limiter() {
    let good = "[instances.a.adaptive]\nalgorithm = \"aimd\"\nmin_limit = 1\ninitial_limit = 8\nbackoff_ratio = 0.5\n[instances.b.adaptive]\nalgorithm = \"vegas\"\ninitial_limit = 6\n";
    let clock = FakeClock::new();
    let registry = on_clock(&clock, good);
    let a = registry.adaptive_limiter("a").unwrap();
    let b = registry.adaptive_limiter("b").unwrap();
    a.try_acquire().unwrap().failure();
    let held = a.try_acquire().unwrap();
    assert_eq!(a.limit(), 4);
    let before = registry.config();

    let mut bad_configs: Vec<Config> = Vec::new();
    // a changes validly, b does not.
    bad_configs.push(unchecked(
        "[instances.a.adaptive]\nalgorithm = \"aimd\"\nmin_limit = 1\ninitial_limit = 30\nmax_queue = 9\nsheddable_share = 0.2\n[instances.b.adaptive]\nalgorithm = \"vegas\"\ninitial_limit = 6\nsmoothing = 0.0\n",
    ));
    // b names aimd and a vegas key.
    bad_configs.push(unchecked(
        "[instances.a.adaptive]\nalgorithm = \"aimd\"\nmin_limit = 1\ninitial_limit = 30\n[instances.b.adaptive]\nalgorithm = \"aimd\"\nalpha = 3\n",
    ));
    // The sections are gone and nothing names an algorithm for the limiters held.
    bad_configs.push(unchecked("[instances.a.breaker]\n[instances.b.breaker]\n"));
    // A share set in code to NaN (no file could write it past validation).
    let mut nan = unchecked(good);
    nan.instances
        .get_mut("a")
        .unwrap()
        .adaptive
        .as_mut()
        .unwrap()
        .sheddable_share = Some(f64::NAN);
    bad_configs.push(nan);
    // Both limits on one instance.
    bad_configs.push(unchecked(&format!(
        "{good}[instances.b.bulkhead]\nmax_concurrent = 3\n"
    )));
    for c in bad_configs {
        let validated = c.validate();
        let reload = registry.reload(c.clone());
        let e = reload.expect_err("must be refused");
        if let Err(v) = validated {
            assert_eq!(e, v, "the same first error as validate");
        } else {
            assert!(matches!(e.problem(), Problem::Missing), "{e:?}");
        }
        assert_eq!(
            *registry.config(),
            *before,
            "the old configuration stays, whole"
        );
        assert_eq!((a.limit(), a.in_flight()), (4, 1), "{e}");
        assert_eq!(b.limit(), 6);
        assert_eq!(registry.adaptive_limiters().len(), 2);
    }
    drop(held);
    // The defaults keep an algorithm: the sections may go, the limiters follow the defaults.
    let reload = registry
        .reload(config(
            "[defaults.adaptive]\nalgorithm = \"aimd\"\nmin_limit = 1\ninitial_limit = 3\n",
        ))
        .unwrap();
    let mut relearning = names(&reload.relearning);
    relearning.sort();
    assert_eq!(relearning, ["a", "b"]);
    assert_eq!((a.limit(), b.limit()), (3, 3));
}

/// Doc (Registry::reload): "an adaptive limiter takes its queue, wait, discipline and shares
/// in place"; (reconfigure): "its queue, wait, discipline and shares take effect at once";
/// (QueueDiscipline::Lifo): "The newest first". Waiters queued under FIFO are served LIFO
/// from the reload on.
#[test]
fn a_discipline_retuned_to_lifo_serves_the_newest_waiter_next() {
    let text = |discipline: &str| {
        format!(
            "[instances.a.adaptive]\nalgorithm = \"aimd\"\nmin_limit = 1\ninitial_limit = 1\nmax_limit = 1\nmax_queue = 4\nmax_wait = \"off\"\ndiscipline = \"{discipline}\"\n"
        )
    };
    let clock = FakeClock::new();
    let registry = on_clock(&clock, &text("fifo"));
    let a = registry.adaptive_limiter("a").unwrap();
    let held = a.try_acquire().unwrap();
    let mut waiters: Vec<Waiting> = (0..3)
        .map(|_| {
            clock.advance(ms(1));
            queued(&a, Priority::Default)
        })
        .collect();
    let reload = registry.reload(config(&text("lifo"))).unwrap();
    assert!(reload.relearning.is_empty(), "{reload:?}");
    assert_eq!((a.limit(), a.in_flight(), a.queued()), (1, 1, 3));
    drop(held);
    let who: Vec<bool> = waiters
        .iter_mut()
        .map(|w| admitted(w).map(drop).is_some())
        .collect();
    assert_eq!(
        who,
        [false, false, true],
        "the newest first, now that the queue is LIFO"
    );
    let who: Vec<bool> = waiters[..2]
        .iter_mut()
        .map(|w| admitted(w).map(drop).is_some())
        .collect();
    assert_eq!(who, [false, true]);
    assert!(admitted(&mut waiters[0]).is_some());
    drop(waiters);
    settled(&a);
}

/// Doc (config module): "the defaults only fill sections in". An instance whose base has the
/// section gets the stage; one without it none; an undeclared name no pipeline at all
/// (Registry::pipeline: "A name the file does not declare is refused").
#[tokio::test(start_paused = true)]
async fn only_instances_with_the_section_get_the_adaptive_stage() {
    let registry = Registry::new(config(
        "[defaults.adaptive]\nalgorithm = \"aimd\"\nmin_limit = 1\ninitial_limit = 1\nmax_limit = 1\n[configs.b]\nadaptive = {}\n[instances.based]\nbase = \"b\"\n[instances.plain]\ndeadline = \"1s\"\n",
    ))
    .unwrap();
    let ok = || async { Ok::<_, ()>(()) };
    let ghost = registry.pipeline("ghost").unwrap_err();
    assert_eq!(ghost.problem(), &Problem::Undeclared, "{ghost}");
    for (name, limited) in [("based", true), ("plain", false)] {
        let pipeline = registry.pipeline(name).unwrap();
        let limiter = registry.adaptive_limiter(name).unwrap();
        let held = limiter.try_acquire().unwrap();
        let r = pipeline.call(ok).await;
        if limited {
            assert_eq!(r, Err(Error::Rejected(Rejected::BulkheadFull)), "{name}");
        } else {
            assert_eq!(r, Ok(()), "{name}: the defaults only fill sections in");
        }
        drop(held);
    }
    let reload = registry.reload((*registry.config()).clone()).unwrap();
    assert_eq!(reload.pipelines, 2, "{reload:?}");
    assert!(reload.relearning.is_empty(), "{reload:?}");
}

/// Doc (RegistryBuilder::max_instances): "The most policies of each kind the registry holds
/// ... Every declared instance keeps a place in each kind (a file may declare at most this
/// many); a name the file does not declare gets [`Problem::Full`] when only reserved places
/// are left."
#[test]
fn max_instances_bounds_adaptive_limiters_too() {
    let text = "[defaults.adaptive]\nalgorithm = \"aimd\"\n[instances.a.adaptive]\n[instances.b.breaker]\n";
    let clock = FakeClock::new();
    let registry = Registry::builder(config(text))
        .runtime(clock.clone())
        .max_instances(3)
        .build()
        .unwrap();
    registry.adaptive_limiter("g1").unwrap();
    let e = registry.adaptive_limiter("g2").unwrap_err();
    assert_eq!(e.problem(), &Problem::Full { max: 3 }, "{e}");
    // The declared names keep their places.
    registry.adaptive_limiter("b").unwrap();
    registry.adaptive_limiter("a").unwrap();
    assert_eq!(registry.adaptive_limiters().len(), 3);
    let e = Registry::builder(config(
        "[defaults.adaptive]\nalgorithm = \"aimd\"\n[instances.a.adaptive]\n[instances.b.adaptive]\n[instances.c.adaptive]\n",
    ))
    .runtime(clock)
    .max_instances(2)
    .build()
    .unwrap_err();
    assert!(matches!(e.problem(), Problem::Full { max: 2 }), "{e:?}");
}

/// Doc (Registry::reload): policies "of instances it no longer declares are kept, on the
/// layers that remain (the defaults, say)"; relearning names limiters whose algorithm's
/// settings changed, a limiter made for an undeclared name included; a layer that shadows a
/// changed default keeps what it learned.
#[test]
fn undeclared_and_shadowed_limiters_follow_only_what_reaches_them() {
    let text = |defaults_initial: u32| {
        format!(
            "[defaults.adaptive]\nalgorithm = \"aimd\"\nmin_limit = 1\nbackoff_ratio = 0.5\ninitial_limit = {defaults_initial}\n\
             [configs.b.adaptive]\ninitial_limit = 16\n[configs.c.adaptive]\ninitial_limit = 16\n\
             [instances.shadowed.adaptive]\ninitial_limit = 8\n\
             [instances.based]\nbase = \"b\"\n"
        )
    };
    let clock = FakeClock::new();
    let registry = on_clock(&clock, &text(10));
    let ghost = registry.adaptive_limiter("ghost").unwrap();
    let shadowed = registry.adaptive_limiter("shadowed").unwrap();
    let based = registry.adaptive_limiter("based").unwrap();
    for l in [&ghost, &shadowed, &based] {
        l.try_acquire().unwrap().failure();
    }
    assert_eq!((ghost.limit(), shadowed.limit(), based.limit()), (5, 4, 8));
    let reload = registry.reload(config(&text(12))).unwrap();
    assert_eq!(names(&reload.relearning), ["ghost"], "{reload:?}");
    assert_eq!((ghost.limit(), shadowed.limit(), based.limit()), (12, 4, 8));
    // Another base with the same merged settings: nothing relearns.
    let moved = text(12).replace(
        "[instances.based]\nbase = \"b\"",
        "[instances.based]\nbase = \"c\"",
    );
    let reload = registry.reload(config(&moved)).unwrap();
    assert!(reload.relearning.is_empty(), "{reload:?}");
    assert_eq!(based.limit(), 8);
    // The instance is no longer declared: it follows the defaults alone.
    let reload = registry
        .reload(config("[defaults.adaptive]\nalgorithm = \"aimd\"\nmin_limit = 1\nbackoff_ratio = 0.5\ninitial_limit = 12\n"))
        .unwrap();
    let mut relearning = names(&reload.relearning);
    relearning.sort();
    assert_eq!(relearning, ["based", "shadowed"], "{reload:?}");
    assert_eq!(
        (ghost.limit(), shadowed.limit(), based.limit()),
        (12, 12, 12)
    );
}

/// Doc (Instance): "settings that contradict each other wait for the instance that completes
/// them"; (Invalid): a conflict is "settings that contradict each other as far as they go".
#[test]
fn contradictions_in_a_layer_alone_wait_for_the_instance() {
    for (layer_keys, fix, algorithm) in [
        ("alpha = 9\nbeta = 1\n", "beta = 10\n", "vegas"),
        (
            "min_limit = 30\ninitial_limit = 10\n",
            "initial_limit = 30\n",
            "aimd",
        ),
        (
            "initial_limit = 500\nmax_limit = 100\n",
            "max_limit = 500\n",
            "gradient2",
        ),
        (
            "default_share = 0.5\nsheddable_share = 0.9\n",
            "sheddable_share = 0.5\n",
            "windowed_gradient",
        ),
    ] {
        for layer in ["defaults", "configs.b"] {
            let text = format!("[{layer}.adaptive]\n{layer_keys}");
            let c = Config::from_toml(&text);
            assert!(c.is_ok(), "{layer}: {layer_keys}: {c:?}");
            let base = if layer == "configs.b" {
                "[instances.a]\nbase = \"b\"\n"
            } else {
                ""
            };
            let fixed =
                format!("{text}{base}[instances.a.adaptive]\nalgorithm = \"{algorithm}\"\n{fix}");
            let registry = on_clock(&FakeClock::new(), &fixed);
            registry.adaptive_limiter("a").unwrap();
            let unfixed =
                format!("{text}{base}[instances.a.adaptive]\nalgorithm = \"{algorithm}\"\n");
            let e = refused(&unfixed);
            assert!(matches!(e.problem(), Problem::Rule(_)), "{e:?}");
        }
    }
}

/// Reloads from one thread while others take and end permits through the registry's handles
/// and pipelines: every slot comes back, the limit stays within its bounds, and only
/// relearning reloads are reported as such.
#[test]
fn reloads_racing_permits_on_other_threads_keep_the_accounting() {
    let text = |initial: u32, queue: usize| {
        format!(
            "[instances.a.adaptive]\nalgorithm = \"aimd\"\nmin_limit = 1\ninitial_limit = {initial}\nmax_limit = 64\nbackoff_ratio = 0.5\nmax_queue = {queue}\nsheddable_share = 0.5\n"
        )
    };
    let clock = FakeClock::new();
    let registry = Arc::new(on_clock(&clock, &text(8, 0)));
    let a = registry.adaptive_limiter("a").unwrap();
    let workers: Vec<_> = (0..3u64)
        .map(|t| {
            let a = a.clone();
            std::thread::spawn(move || {
                let mut rng = Rng::new(100 + t);
                let handle = a.with_priority(Priority::ALL[usize::try_from(t).unwrap()]);
                let mut held = Vec::new();
                for _ in 0..5_000 {
                    if rng.chance(2) {
                        if let Ok(p) = handle.try_acquire() {
                            held.push(p);
                        }
                    } else if let Some(p) = held.pop() {
                        match rng.below(4) {
                            0 => p.success(),
                            1 => p.failure(),
                            2 => p.ignore(),
                            _ => drop(p),
                        }
                    }
                }
            })
        })
        .collect();
    let mut rng = Rng::new(9);
    for i in 0..300 {
        let relearn = i % 3 == 0;
        let initial = if relearn { [4, 8, 16][rng.below(3)] } else { 8 };
        let queue = rng.below(3);
        if let Ok(r) = registry.reload(config(&text(initial, queue))) {
            assert!(r.relearning.len() <= 1);
        }
        let l = a.limit();
        assert!((1..=64).contains(&l), "{l}");
    }
    for w in workers {
        w.join().unwrap();
    }
    settled(&a);
}

/// Doc (config module): `Config` is `Serialize` and `Deserialize`, durations in the human
/// grammar. Edge durations and floats print back to themselves, or were never accepted.
#[test]
fn edge_durations_and_floats_print_back_to_themselves() {
    let mut accepted = 0;
    for duration in [
        "\"1ns\"",
        "\"1us\"",
        "\"1µs\"",
        "\"999ms\"",
        "\"1h 1m 1s 1ms\"",
        "\"25h\"",
        "\"90m\"",
        "\"1.5s\"",
        "\"5124095h\"",
        "\"18446744073s\"",
        "\"1d\"",
        "\"0s\"",
    ] {
        for key in [
            "max_wait",
            "codel_target",
            "codel_interval",
            "timeout",
            "probe_interval",
        ] {
            let algorithm = if key == "probe_interval" {
                "windowed_gradient"
            } else {
                "aimd"
            };
            let discipline = if key.starts_with("codel") {
                "discipline = \"codel\"\n"
            } else {
                ""
            };
            let text = format!(
                "[defaults.adaptive]\n{key} = {duration}\n[instances.a.adaptive]\nalgorithm = \"{algorithm}\"\n{discipline}"
            );
            let Ok(c) = Config::from_toml(&text) else {
                continue;
            };
            accepted += 1;
            let printed = toml::to_string(&c).unwrap();
            let back = Config::from_toml(&printed).unwrap_or_else(|e| {
                panic!("{key} = {duration} printed as\n{printed}\nrefused: {e}")
            });
            assert_eq!(back, c, "{key} = {duration}:\n{printed}");
        }
    }
    assert!(accepted >= 20, "{accepted}");
    for share in [
        "5e-324",
        "1e-6",
        "0.30000000000000004",
        "0.9999999999999999",
        "1",
    ] {
        let text = format!(
            "[instances.a.adaptive]\nalgorithm = \"aimd\"\ndefault_share = 1.0\nsheddable_share = {share}\n"
        );
        let c = config(&text);
        let printed = toml::to_string(&c).unwrap();
        assert_eq!(
            Config::from_toml(&printed).unwrap(),
            c,
            "{share}:\n{printed}"
        );
    }
}

/// Doc (reconfigure): "a limit below what is held admits nobody new, queued callers
/// included"; (WindowedGradient): a fresh one measures "at min_limit"; (Reload::retuned):
/// "Policies that took their new settings in place, state and permits kept"; lowered shares
/// revoke nothing either.
#[test]
fn relearning_into_a_windowed_gradient_and_lowering_shares_revoke_nothing() {
    let clock = FakeClock::new();
    let aimd = "[instances.a.adaptive]\nalgorithm = \"aimd\"\nmin_limit = 1\ninitial_limit = 6\nmax_queue = 3\nmax_wait = \"off\"\n";
    let registry = on_clock(&clock, aimd);
    let a = registry.adaptive_limiter("a").unwrap();
    let sheddable = hold(&a, Priority::Sheddable, 4);
    let reload = registry
        .reload(config(&format!("{aimd}sheddable_share = 0.2\n")))
        .unwrap();
    assert!(reload.relearning.is_empty());
    assert!(reload.retuned >= 1, "retuned in place: {reload:?}");
    assert_eq!(a.in_flight(), 4, "lowered shares revoke nothing");
    assert!(a.with_priority(Priority::Sheddable).try_acquire().is_err());
    let mut others = hold(&a, Priority::Default, 2);
    let mut w = queued(&a, Priority::Default);
    let windowed = "[instances.a.adaptive]\nalgorithm = \"windowed_gradient\"\nmin_limit = 2\ninitial_limit = 6\nprobe_samples = 1\nmax_queue = 3\nmax_wait = \"off\"\n";
    let reload = registry.reload(config(windowed)).unwrap();
    assert_eq!(names(&reload.relearning), ["a"]);
    assert_eq!(
        (a.limit(), a.in_flight(), a.queued()),
        (2, 6, 1),
        "measuring at min_limit"
    );
    drop(sheddable);
    assert!(admitted(&mut w).is_none(), "2 of 2 still in flight");
    others.pop().unwrap().ignore();
    let p = admitted(&mut w).expect("1 of 2 in flight now");
    drop(p);
    drop(others);
    settled(&a);
}

// === reconfigure ===========================================================================

/// Doc (AdaptiveLimiter::reconfigure): "its algorithm replaces the one in force, so learning
/// starts again from the new algorithm's initial limit ... Its name, listener and runtime are
/// not read"; "# Errors As build; nothing changes then".
#[test]
fn reconfigure_with_a_configured_builder_and_refusals_that_change_nothing() {
    let clock = FakeClock::new();
    let registry = on_clock(
        &clock,
        "[instances.a.adaptive]\nalgorithm = \"aimd\"\nmin_limit = 1\ninitial_limit = 10\nbackoff_ratio = 0.5\nsheddable_share = 0.5\n",
    );
    let a = registry.adaptive_limiter("a").unwrap();
    a.try_acquire().unwrap().failure();
    let held = a.try_acquire().unwrap();
    assert_eq!(a.limit(), 5);

    // Refused: nothing changes, shares included.
    let other = config("[instances.zzz.adaptive]\nalgorithm = \"vegas\"\ninitial_limit = 40\n");
    let builder = other.instance("zzz").unwrap().adaptive_limiter().unwrap();
    for bad in [
        builder.clone().share(Priority::Sheddable, f64::NAN),
        builder.clone().share(Priority::Default, 0.0),
        builder.clone().share(Priority::Default, 0.5), // below sheddable's 0.8
        builder.clone().share(Priority::Critical, 0.9),
        builder.clone().share(Priority::Sheddable, f64::INFINITY),
    ] {
        assert!(a.reconfigure(bad).is_err());
        assert_eq!((a.limit(), a.in_flight()), (5, 1));
        // 0.5 × 5 = 2.5: two sheddable calls besides the one held? The held one counts.
        assert_eq!(room(&a, Priority::Sheddable), 2, "the old shares stay");
    }
    // Accepted: another algorithm from another instance's layers, under this name.
    a.reconfigure(builder).unwrap();
    assert_eq!((a.name(), a.limit(), a.in_flight()), ("a", 40, 1));
    assert_eq!(
        registry.adaptive_limiter("a").unwrap().limit(),
        40,
        "every handle sees it"
    );
    assert_eq!(
        room(&a, Priority::Sheddable),
        31,
        "sheddable's default 0.8 × 40, one held"
    );
    drop(held);
    settled(&a);
}

// === idle gaps =============================================================================

/// Doc (adaptive module): RTTs beyond `u64::MAX` ns count as that many; every limit stays
/// within `[min_limit, max_limit]`; (WindowedGradient): it measures again "once
/// `probe_interval` has passed since the last measurement". Centuries of idle virtual time,
/// and permits held across them, for every configured algorithm.
#[test]
fn long_idle_gaps_keep_every_configured_limit_in_bounds() {
    for (algorithm, _) in ALGORITHMS {
        let clock = FakeClock::new();
        let registry = on_clock(
            &clock,
            &format!(
                "[instances.a.adaptive]\nalgorithm = \"{algorithm}\"\nmin_limit = 2\ninitial_limit = 10\nmax_limit = 50\n{}",
                if algorithm == "windowed_gradient" {
                    "probe_samples = 1\nwindow = 2\nprobe_interval = \"1s\"\n"
                } else {
                    ""
                }
            ),
        );
        let a = registry.adaptive_limiter("a").unwrap();
        let mut rng = Rng::new(7);
        for round in 0..200 {
            let n = 1 + rng.below(usize::try_from(a.limit()).unwrap());
            let held = hold(&a, Priority::Critical, n);
            let gap = match rng.below(5) {
                0 => CENTURY,
                1 => YEAR,
                2 => Duration::ZERO,
                _ => ms(u64::try_from(rng.below(50)).unwrap()),
            };
            clock.advance(gap);
            for p in held {
                match rng.below(3) {
                    0 => p.success(),
                    1 => p.failure(),
                    _ => drop(p),
                }
            }
            let l = a.limit();
            assert!((2..=50).contains(&l), "{algorithm} round {round}: {l}");
            if rng.chance(10) {
                clock.advance(CENTURY);
            }
        }
        settled(&a);
    }
    // The windowed gradient measures again after a long idle gap: its limit drops to min_limit.
    let clock = FakeClock::new();
    let registry = on_clock(
        &clock,
        "[instances.a.adaptive]\nalgorithm = \"windowed_gradient\"\nmin_limit = 2\ninitial_limit = 10\nprobe_samples = 1\nprobe_interval = \"1s\"\n",
    );
    let a = registry.adaptive_limiter("a").unwrap();
    assert_eq!(a.limit(), 2);
    let p = a.try_acquire().unwrap();
    clock.advance(ms(5));
    p.success();
    assert_eq!(a.limit(), 10);
    clock.advance(CENTURY);
    let p = a.try_acquire().unwrap();
    clock.advance(ms(5));
    p.success();
    assert_eq!(
        a.limit(),
        2,
        "a century past probe_interval: measuring again"
    );
}

/// Doc (QueueDiscipline::Codel): "once the queue has not been empty for `interval`, a caller
/// who joins it waits at most `target`". A year with an empty queue is no standing queue.
#[tokio::test(start_paused = true)]
async fn a_codel_queue_idle_for_a_year_does_not_cut_the_next_wait() {
    let registry = Registry::new(config(
        "[instances.a.adaptive]\nalgorithm = \"aimd\"\nmin_limit = 1\ninitial_limit = 1\nmax_limit = 1\nmax_queue = 4\nmax_wait = \"off\"\ndiscipline = \"codel\"\ncodel_target = \"5ms\"\ncodel_interval = \"100ms\"\n",
    ))
    .unwrap();
    let a = registry.adaptive_limiter("a").unwrap();
    let held = a.try_acquire().unwrap();
    tokio::time::advance(YEAR).await;
    let waiter = tokio::spawn({
        let a = a.clone();
        async move { a.admit(Wait::Until(Deadline::none())).await.map(drop) }
    });
    tokio::time::sleep(ms(50)).await;
    assert_eq!(
        a.queued(),
        1,
        "still waiting past the 5 ms target: the queue stood 50 ms"
    );
    drop(held);
    assert_eq!(waiter.await.unwrap(), Ok(()));
    assert_eq!((a.in_flight(), a.queued()), (0, 0));
}

/// Doc (AdaptiveConfig): `max_wait` "The longest a call waits for a slot, or "off" (default
/// 1 s)"; (KeyedAdaptiveLimiter::acquire_before, as the limiter's): "[`Rejected::BulkheadFull`]
/// when the queue is full or the wait exceeds `max_wait`"; a reload's wait takes effect for
/// the next caller. In paused time, after a century idle.
#[tokio::test(start_paused = true)]
async fn max_wait_from_the_file_bounds_waits_and_follows_reloads_after_a_century() {
    let text = |wait: &str| {
        format!(
            "[instances.a.adaptive]\nalgorithm = \"aimd\"\nmin_limit = 1\ninitial_limit = 1\nmax_limit = 1\nmax_queue = 2\n{wait}"
        )
    };
    let registry = Registry::new(config(&text(""))).unwrap();
    let pipeline = registry.pipeline("a").unwrap();
    let a = registry.adaptive_limiter("a").unwrap();
    tokio::time::advance(CENTURY).await;
    let held = a.try_acquire().unwrap();
    let waited = |r: Result<(), Error<()>>, expected: Duration, took: Duration| {
        assert_eq!(r, Err(Error::Rejected(Rejected::BulkheadFull)));
        assert_eq!(took, expected);
    };
    let start = tokio::time::Instant::now();
    let r = pipeline.call(|| async { Ok::<_, ()>(()) }).await;
    waited(r, Duration::from_secs(1), start.elapsed());
    registry
        .reload(config(&text("max_wait = \"5s\"\n")))
        .unwrap();
    let start = tokio::time::Instant::now();
    let r = pipeline.call(|| async { Ok::<_, ()>(()) }).await;
    waited(r, Duration::from_secs(5), start.elapsed());
    // A zero wait with a queue is the bulkhead builder's error: refused, the 5 s stay.
    let e = registry
        .reload(unchecked(&text("max_wait = \"0s\"\n")))
        .unwrap_err();
    assert_eq!(e.path(), "instances.a.adaptive.max_wait", "{e}");
    let start = tokio::time::Instant::now();
    let r = pipeline.call(|| async { Ok::<_, ()>(()) }).await;
    waited(r, Duration::from_secs(5), start.elapsed());
    // "off": it waits as long as it must, a year here.
    registry
        .reload(config(&text("max_wait = \"off\"\n")))
        .unwrap();
    let call = tokio::spawn({
        let pipeline = pipeline.clone();
        async move { pipeline.call(|| async { Ok::<_, ()>(()) }).await }
    });
    tokio::time::sleep(YEAR).await;
    assert_eq!(a.queued(), 1);
    drop(held);
    assert_eq!(call.await.unwrap(), Ok(()));
    assert_eq!((a.in_flight(), a.queued(), a.limit()), (0, 0, 1));
}

// === shares from the file ==================================================================

/// Doc (AdaptiveLimiterBuilder::share): "admitted while fewer than `limit × share` are in
/// flight (always when none are)"; "critical calls always have the whole limit"; the file's
/// `default_share` and `sheddable_share` (default 1 and 0.8).
#[test]
fn configured_shares_apply_per_priority() {
    let clock = FakeClock::new();
    let registry = on_clock(
        &clock,
        "[instances.a.adaptive]\nalgorithm = \"aimd\"\nmin_limit = 1\ninitial_limit = 10\ndefault_share = 0.7\nsheddable_share = 0.3\n[instances.d.adaptive]\nalgorithm = \"aimd\"\nmin_limit = 1\ninitial_limit = 5\n",
    );
    let a = registry.adaptive_limiter("a").unwrap();
    let s = hold(&a, Priority::Sheddable, 3);
    assert!(a.with_priority(Priority::Sheddable).try_acquire().is_err());
    let d = hold(&a, Priority::Default, 4);
    assert!(
        a.try_acquire().is_err(),
        "7 of 10: the default share is used up"
    );
    let c = hold(&a, Priority::Critical, 3);
    assert!(a.with_priority(Priority::Critical).try_acquire().is_err());
    drop((s, d, c));
    settled(&a);
    let d = registry.adaptive_limiter("d").unwrap();
    assert_eq!(room(&d, Priority::Sheddable), 4, "the default 0.8 of 5");
    assert_eq!(room(&d, Priority::Default), 5);
    assert_eq!(room(&d, Priority::Critical), 5);
    // Tiny shares still admit one call when none are in flight.
    let tiny = on_clock(
        &clock,
        "[instances.t.adaptive]\nalgorithm = \"aimd\"\nmin_limit = 1\ninitial_limit = 3\ndefault_share = 0.000001\nsheddable_share = 0.000001\n",
    );
    let t = tiny.adaptive_limiter("t").unwrap();
    assert_eq!(room(&t, Priority::Sheddable), 1);
    assert_eq!(room(&t, Priority::Default), 1);
    assert_eq!(room(&t, Priority::Critical), 3);
}

// === AnyAlgorithm and Either ===============================================================

/// Doc (AnyAlgorithm): "Any one of the algorithms, as a single type ... Each call goes to the
/// algorithm inside". Sample for sample over seeded random samples, for all five.
#[test]
fn any_algorithm_is_sample_for_sample_the_algorithm_inside() {
    fn same<A: LimitAlgorithm + Clone + Into<AnyAlgorithm>>(name: &str, algorithm: A, seed: u64) {
        let mut plain = algorithm.clone();
        let mut any: AnyAlgorithm = algorithm.into();
        assert_eq!(
            (any.limit(), any.bounds()),
            (plain.limit(), plain.bounds()),
            "{name}"
        );
        let mut rng = Rng::new(seed);
        let mut at = Duration::ZERO;
        for i in 0..2_000 {
            let rtt = match rng.below(10) {
                0 => Duration::ZERO,
                1 => CENTURY,
                2 => Duration::MAX,
                _ => ms(1 + u64::try_from(rng.below(100)).unwrap()),
            };
            at = at.saturating_add(ms(u64::try_from(rng.below(5_000)).unwrap()));
            let limit = plain.limit();
            let inflight =
                u32::try_from(rng.below(usize::try_from(limit).unwrap().saturating_mul(2) + 1))
                    .unwrap();
            let sample = Sample {
                rtt,
                inflight,
                dropped: rng.chance(7),
                at,
            };
            assert_eq!(
                any.update(&sample),
                plain.update(&sample),
                "{name} sample {i}: {sample:?}"
            );
            assert_eq!(any.limit(), plain.limit(), "{name} sample {i}");
            assert_eq!(any.bounds(), plain.bounds(), "{name}");
        }
    }
    for seed in 1..=5 {
        same(
            "aimd",
            Aimd::builder()
                .min_limit(1)
                .initial_limit(10)
                .max_limit(60)
                .build()
                .unwrap(),
            seed,
        );
        same(
            "vegas",
            Vegas::builder()
                .initial_limit(10)
                .max_limit(60)
                .seed(seed)
                .build()
                .unwrap(),
            seed,
        );
        same(
            "gradient2",
            Gradient2::builder()
                .min_limit(1)
                .initial_limit(10)
                .max_limit(60)
                .build()
                .unwrap(),
            seed,
        );
        same(
            "windowed",
            WindowedGradient::builder()
                .min_limit(2)
                .initial_limit(10)
                .max_limit(60)
                .window(3)
                .probe_samples(2)
                .probe_interval(Duration::from_secs(30))
                .build()
                .unwrap(),
            seed,
        );
        same("fixed", FixedLimit(9), seed);
    }
}

/// Doc (Either): "Each call goes to the stage inside, and so does its outcome."
#[test]
fn either_forwards_admission_and_outcomes_to_the_stage_inside() {
    type Stage = Either<Bulkhead<FakeClock>, Limiter>;
    let clock = FakeClock::new();
    let c = config(
        "[instances.a.adaptive]\nalgorithm = \"aimd\"\nmin_limit = 1\ninitial_limit = 2\nbackoff_ratio = 0.5\n",
    );
    let limiter = c
        .instance("a")
        .unwrap()
        .adaptive_limiter()
        .unwrap()
        .runtime(clock.clone())
        .build()
        .unwrap();
    let right: Stage = Either::Right(limiter.clone());
    let g1 = right.try_admit().expect("a free slot");
    let g2 = right.try_admit().expect("a second slot");
    assert!(right.try_admit().is_none(), "the limit is 2");
    assert_eq!(limiter.in_flight(), 2);
    let mut refused = Box::pin(right.admit(Wait::No));
    assert!(
        matches!(
            poll(refused.as_mut()),
            Poll::Ready(Err(Rejected::BulkheadFull))
        ),
        "refused at once with the limiter's reason"
    );
    <Stage as Admission>::finish(g2, Outcome::Failure);
    assert_eq!(limiter.limit(), 1, "the outcome reached the algorithm");
    <Stage as Admission>::finish(g1, Outcome::Ignored);
    assert_eq!((limiter.limit(), limiter.in_flight()), (1, 0));
    let mut waiting = Box::pin(right.admit(Wait::Until(Deadline::none())));
    let g = match poll(waiting.as_mut()) {
        Poll::Ready(Ok(g)) => g,
        other => panic!("a free slot: {:?}", other.map(|r| r.map(drop))),
    };
    drop(g);
    assert_eq!(limiter.limit(), 1, "a dropped guard teaches nothing");

    let bulkhead = Bulkhead::builder(1)
        .max_queue(0)
        .runtime(clock.clone())
        .build()
        .unwrap();
    let left: Stage = Either::Left(bulkhead.clone());
    let g = left.try_admit().unwrap();
    assert!(left.try_admit().is_none());
    assert_eq!(bulkhead.in_flight(), 1);
    <Stage as Admission>::finish(g, Outcome::Failure);
    assert_eq!(bulkhead.in_flight(), 0);
    assert!(left.try_admit().is_some());
    assert_eq!(limiter.in_flight(), 0, "the other kind is untouched");
}

// === serialization =========================================================================

/// Doc (config module): "[`Config`] is `Deserialize` ... and `Serialize`, so an admin endpoint
/// can print the configuration in force". Every adaptive key, every algorithm and discipline,
/// in every layer, through TOML and JSON.
#[test]
fn every_adaptive_key_round_trips_through_toml_and_json() {
    let mut text = String::from("[defaults.adaptive]\n");
    for (key, value, _) in all_algorithm_keys() {
        text.push_str(&format!("{key} = {value}\n"));
    }
    text.push_str(
        "codel_target = \"1h 30m\"\ncodel_interval = \"250ms\"\nmax_wait = \"off\"\nmax_queue = 7\ndefault_share = 0.9\nsheddable_share = 0.30000000000000004\n",
    );
    text.push_str("[configs.b.adaptive]\nalgorithm = \"gradient2\"\nsmoothing = 0.1\nqueue_size = 0\nrtt_tolerance = 1.0\nmin_limit = 1\n");
    for (i, (algorithm, own)) in ALGORITHMS.iter().enumerate() {
        let discipline = ["fifo", "lifo", "codel", "codel"][i];
        text.push_str(&format!(
            "[instances.i{i}]\nbase = \"b\"\ndeadline = \"2s\"\n[instances.i{i}.adaptive]\nalgorithm = \"{algorithm}\"\ninitial_limit = {}\nmax_limit = 4294967295\ndiscipline = \"{discipline}\"\nmax_wait = \"1s 500ms\"\n",
            20 + i
        ));
        for (key, _, value) in *own {
            text.push_str(&format!("{key} = {value}\n"));
        }
        if discipline == "codel" {
            text.push_str("codel_target = \"1ms\"\n");
        }
    }
    text.push_str("[instances.x]\nbase = \"b\"\nadaptive = {}\n[instances.x.rate_limit]\ncount = 1\nperiod = \"1s\"\n");
    let c = config(&text);
    let printed = toml::to_string(&c).unwrap();
    assert_eq!(Config::from_toml(&printed).unwrap(), c, "TOML:\n{printed}");
    let json = serde_json::to_string(&c).unwrap();
    let back: Config = serde_json::from_str(&json).unwrap();
    back.validate().unwrap();
    assert_eq!(back, c, "JSON:\n{json}");
    // And the registry built from what was printed relearns nothing on reload of the original.
    let clock = FakeClock::new();
    let registry = Registry::builder(Config::from_toml(&printed).unwrap())
        .runtime(clock)
        .build()
        .unwrap();
    let reload = registry.reload(c).unwrap();
    assert!(reload.relearning.is_empty(), "{reload:?}");
}

// === validate against the registry, on seeded random files =================================

/// A random adaptive section's lines: each key now and then, with good values mostly.
fn random_section(rng: &mut Rng, out: &mut String) {
    let keys: &[(&str, &[&str])] = &[
        (
            "algorithm",
            &[
                "\"aimd\"",
                "\"vegas\"",
                "\"gradient2\"",
                "\"windowed_gradient\"",
            ],
        ),
        ("initial_limit", &["1", "5", "20", "50", "0", "4294967295"]),
        ("min_limit", &["1", "3", "20", "0"]),
        ("max_limit", &["10", "100", "1000", "4294967295"]),
        ("backoff_ratio", &["0.5", "0.9", "1.0"]),
        ("timeout", &["\"1s\"", "\"10ms\"", "\"0s\""]),
        ("smoothing", &["0.2", "1.0", "0.0", "1.5"]),
        ("alpha", &["2", "3", "9"]),
        ("beta", &["4", "6", "1"]),
        ("probe_multiplier", &["10", "0"]),
        ("seed", &["7"]),
        ("queue_size", &["0", "4"]),
        ("long_window", &["600", "0"]),
        ("rtt_tolerance", &["1.0", "2.0", "0.5"]),
        ("window", &["10", "0"]),
        ("buffer", &["0.25", "0.0", "-1.0"]),
        ("probe_samples", &["5", "0"]),
        ("probe_interval", &["\"1s\"", "\"0s\""]),
        ("max_queue", &["0", "4"]),
        ("max_wait", &["\"off\"", "\"0s\"", "\"1s\""]),
        ("discipline", &["\"fifo\"", "\"lifo\"", "\"codel\""]),
        ("codel_target", &["\"5ms\"", "\"0s\""]),
        ("codel_interval", &["\"100ms\"", "\"0s\""]),
        ("default_share", &["1.0", "0.9", "0.5", "nan"]),
        ("sheddable_share", &["0.8", "0.3", "1.0", "1.5"]),
    ];
    for (key, values) in keys {
        let odds = if *key == "algorithm" { 2 } else { 7 };
        if rng.chance(odds) {
            // The first value is good: favour it.
            let v = if rng.chance(2) {
                values[0]
            } else {
                rng.pick(values)
            };
            out.push_str(&format!("{key} = {v}\n"));
        }
    }
}

fn random_file(seed: u64) -> String {
    let mut rng = Rng::new(seed);
    let mut text = String::new();
    if rng.chance(2) {
        text.push_str("[defaults.adaptive]\n");
        random_section(&mut rng, &mut text);
    }
    if rng.chance(5) {
        text.push_str("[defaults.bulkhead]\nmax_concurrent = 2\n");
    }
    let base = rng.chance(2);
    if base {
        text.push_str("[configs.b]\n");
        if rng.chance(2) {
            text.push_str("[configs.b.adaptive]\n");
            random_section(&mut rng, &mut text);
        }
        if rng.chance(8) {
            text.push_str("[configs.b.bulkhead]\nmax_concurrent = 2\n");
        }
    }
    for name in ["a", "c", "\"d.e\""] {
        text.push_str(&format!("[instances.{name}]\n"));
        if base && rng.chance(2) {
            text.push_str("base = \"b\"\n");
        }
        if rng.chance(6) {
            text.push_str("breaker = {}\n");
        }
        if rng.chance(8) {
            text.push_str(&format!(
                "[instances.{name}.bulkhead]\nmax_concurrent = 3\n"
            ));
        }
        if rng.chance(3) {
            text.push_str(&format!("[instances.{name}.adaptive]\n"));
            random_section(&mut rng, &mut text);
        }
    }
    text
}

/// Doc (Config::validate): "Checks every layer and every instance through the policy
/// builders ... the first problem found"; (RegistryBuilder::build): "The configuration's first
/// [`Invalid`] setting"; (Registry::reload): "The new configuration's first [`Invalid`]
/// setting"; (Instance): "`build` succeeds unless the caller changes it". On seeded random
/// files: the same verdict and the same error everywhere, and a valid file's limiters are
/// the ones its instances' builders make.
#[test]
fn validate_from_toml_registry_and_reload_agree_on_random_files() {
    let (mut valid, mut invalid) = (0, 0);
    for seed in 1..=600 {
        let text = random_file(seed);
        let Ok(c) = toml::from_str::<Config>(&text) else {
            let e = refused(&text);
            assert!(
                matches!(e.problem(), Problem::Syntax(_)),
                "seed {seed}: {e:?}"
            );
            continue;
        };
        let verdict = c.validate();
        let parsed = Config::from_toml(&text);
        assert_eq!(
            parsed.as_ref().err(),
            verdict.as_ref().err(),
            "seed {seed}\n{text}"
        );
        let clock = FakeClock::new();
        let built = Registry::builder(c.clone()).runtime(clock.clone()).build();
        assert_eq!(
            built.as_ref().err(),
            verdict.as_ref().err(),
            "seed {seed}: validate and the registry disagree\n{text}"
        );
        let empty = Registry::builder(Config::default())
            .runtime(clock.clone())
            .build()
            .unwrap();
        let reload = empty.reload(c.clone());
        assert_eq!(
            reload.as_ref().err(),
            verdict.as_ref().err(),
            "seed {seed}: validate and reload disagree\n{text}"
        );
        let Ok(registry) = built else {
            invalid += 1;
            continue;
        };
        valid += 1;
        let printed = toml::to_string(&c).unwrap();
        assert_eq!(
            Config::from_toml(&printed).unwrap(),
            c,
            "seed {seed}: round trip"
        );
        for name in ["a", "c", "d.e", "undeclared"] {
            let from_instance = c.instance(name).unwrap().adaptive_limiter().map(|b| {
                b.runtime(clock.clone())
                    .build()
                    .expect("build succeeds once checked")
            });
            let from_registry = registry.adaptive_limiter(name);
            assert_eq!(
                from_instance.is_ok(),
                from_registry.is_ok(),
                "seed {seed} {name}: {:?} vs {:?}\n{text}",
                from_instance.as_ref().err(),
                from_registry.as_ref().err()
            );
            if let (Ok(x), Ok(y)) = (&from_instance, &from_registry) {
                assert_eq!(
                    (x.limit(), y.name()),
                    (y.limit(), name),
                    "seed {seed} {name}"
                );
            }
        }
    }
    assert!(
        valid >= 60 && invalid >= 60,
        "coverage: {valid} valid, {invalid} invalid"
    );
}

// === gauges (feature `metrics`) ============================================================

#[cfg(feature = "metrics")]
mod gauges {
    use super::*;
    use crate::support::snapshot::{Series, gauge, snapshot};
    use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

    /// Every series of one snapshot (a snapshot is taken once per `record_gauges`: the
    /// debugging recorder hands each update out once).
    fn record(
        recorder: &DebuggingRecorder,
        snapshotter: &Snapshotter,
        registry: &Registry<FakeClock>,
    ) -> Vec<Series> {
        metrics::with_local_recorder(recorder, || registry.record_gauges());
        snapshot(snapshotter)
    }

    fn gauge_of(series: &[Series], metric: &str, instance: &str) -> Option<f64> {
        gauge(series, metric, &[("name", instance)])
    }

    fn check(series: &[Series], instance: &str, expected: [f64; 3]) {
        for (metric, want) in [
            "tidewall_adaptive_limit",
            "tidewall_adaptive_in_flight",
            "tidewall_adaptive_queued",
        ]
        .into_iter()
        .zip(expected)
        {
            let got = gauge_of(series, metric, instance);
            assert!(
                got.is_some_and(|g| (g - want).abs() < 1e-9),
                "{metric}{{name={instance}}}: {got:?}, expected {want}"
            );
        }
    }

    /// Doc (Registry::record_gauges): "each adaptive limiter's limit, calls in flight and
    /// callers queued ... labelled with the instance's name"; (telemetry): "gauges ... carry
    /// `name` only". They follow reloads (relearning, retuning) and stay after a refusal.
    #[test]
    fn adaptive_gauges_follow_the_limiter_through_reloads() {
        let text = |initial: u32, queue: usize| {
            format!(
                "[instances.a.adaptive]\nalgorithm = \"aimd\"\nmin_limit = 1\ninitial_limit = {initial}\nbackoff_ratio = 0.5\nmax_queue = {queue}\nmax_wait = \"off\"\n[instances.b.adaptive]\nalgorithm = \"vegas\"\ninitial_limit = 7\n"
            )
        };
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let clock = FakeClock::new();
        let registry = metrics::with_local_recorder(&recorder, || {
            Registry::builder(config(&text(4, 2)))
                .runtime(clock.clone())
                .build()
                .unwrap()
        });
        let a = registry.adaptive_limiter("a").unwrap();
        a.try_acquire().unwrap().failure();
        let held = hold(&a, Priority::Default, 2);
        let mut w = queued(&a, Priority::Default);
        let series = record(&recorder, &snapshotter, &registry);
        check(&series, "a", [2.0, 2.0, 1.0]);
        check(&series, "b", [7.0, 0.0, 0.0]);
        for (name, labels, _) in &series {
            if name.starts_with("tidewall_adaptive_") {
                let keys: Vec<&str> = labels.keys().map(String::as_str).collect();
                assert_eq!(keys, ["name"], "{name}: {labels:?}");
            }
        }
        // A refused reload: the same values.
        assert!(registry.reload(unchecked(&text(0, 2))).is_err());
        check(
            &record(&recorder, &snapshotter, &registry),
            "a",
            [2.0, 2.0, 1.0],
        );
        // Relearning: the new initial limit; the held permits kept, the waiter admitted.
        registry.reload(config(&text(9, 2))).unwrap();
        check(
            &record(&recorder, &snapshotter, &registry),
            "a",
            [9.0, 3.0, 0.0],
        );
        let admitted_waiter = admitted(&mut w).expect("admitted by the larger limit");
        drop((held, admitted_waiter, w));
        let series = record(&recorder, &snapshotter, &registry);
        check(&series, "a", [9.0, 0.0, 0.0]);
        assert!(gauge_of(&series, "tidewall_adaptive_limit", "ghost").is_none());
    }

    /// Doc (telemetry): "Checking a configuration (`Config::validate`, a layer that is not an
    /// instance) registers nothing"; (Instance): "Builds a policy only to check its settings.
    /// Without a recorder of its own it would register its metric series".
    #[test]
    fn checking_adaptive_sections_registers_no_metric() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            let c = config(
                "[defaults.adaptive]\nalgorithm = \"vegas\"\n[configs.b.adaptive]\nalgorithm = \"aimd\"\n[instances.a.adaptive]\nalgorithm = \"gradient2\"\n[instances.w.adaptive]\nalgorithm = \"windowed_gradient\"\n",
            );
            c.validate().unwrap();
            for name in ["a", "w", "ghost"] {
                drop(c.instance(name).unwrap().adaptive_limiter().unwrap());
            }
        });
        let names: Vec<String> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .map(|(key, _, _, _)| format!("{:?}", key.key()))
            .collect();
        assert!(names.is_empty(), "checking registered {names:?}");
    }

    /// Doc (Registry::adaptive_limiter): "reporting as `policy` `adaptive` under this name";
    /// (telemetry) `tidewall_rejections_total{policy, name, reason}`.
    #[test]
    fn adaptive_refusals_count_under_the_adaptive_policy() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let clock = FakeClock::new();
        let registry = metrics::with_local_recorder(&recorder, || {
            Registry::builder(config(
                "[instances.a.adaptive]\nalgorithm = \"aimd\"\nmin_limit = 1\ninitial_limit = 1\n",
            ))
            .runtime(clock.clone())
            .build()
            .unwrap()
        });
        let a = registry.adaptive_limiter("a").unwrap();
        let held = a.try_acquire().unwrap();
        metrics::with_local_recorder(&recorder, || {
            assert!(a.try_acquire().is_err());
        });
        drop(held);
        let refusals: Vec<(Vec<(String, String)>, DebugValue)> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .filter(|(key, _, _, _)| key.key().name() == "tidewall_rejections_total")
            .map(|(key, _, _, value)| {
                let labels = key
                    .key()
                    .labels()
                    .map(|l| (l.key().to_owned(), l.value().to_owned()))
                    .collect();
                (labels, value)
            })
            .collect();
        let counted = refusals.iter().any(|(labels, value)| {
            labels.contains(&("policy".to_owned(), "adaptive".to_owned()))
                && labels.contains(&("name".to_owned(), "a".to_owned()))
                && *value == DebugValue::Counter(1)
        });
        assert!(counted, "{refusals:?}");
    }
}
