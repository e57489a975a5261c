#![cfg(all(feature = "toml", feature = "chaos", feature = "test-util"))]
//! Hostile black-box tests of fault injectors configured by name (`[<layer>.chaos]`,
//! `Instance::chaos`, `Registry::chaos`, `Registry::chaos_handles`, `Registry::reload`,
//! `Chaos::reconfigure`), written from the public docs alone: rates at the edges of the
//! part-per-million range through TOML, sums judged as kept, layering of every key (a sum past
//! 1 in a layer alone, the switch from each layer, a latency and its rate from different
//! layers), key paths, reloads trading shares, reloads racing calls on threads and on a
//! multi-thread runtime, determinism against handles built in code, the fixed seed, the
//! registry's bound, printing a configuration back, validation against building, and metrics.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use tidewall::breaker::State;
use tidewall::chaos::{Chaos, ChaosSettings, Fault, InjectedFault, Injection};
use tidewall::config::{ChaosConfig, Config, Invalid, Policies, Problem, Registry};
use tidewall::testing::FakeClock;
use tidewall::{ConfigError, Error, Name, Rejected};
use tidewall_core::rng::SplitMix64;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn parse(text: &str) -> Config {
    Config::from_toml(text).unwrap_or_else(|e| panic!("must be accepted: {e}\n---\n{text}"))
}

/// The text read as a `Config` without validation (a configuration a caller builds or reads
/// with serde, not through `from_toml`).
fn raw(text: &str) -> Config {
    toml::from_str(text).unwrap_or_else(|e| panic!("not the format: {e}\n---\n{text}"))
}

fn refused(text: &str) -> Invalid {
    match Config::from_toml(text) {
        Ok(c) => panic!("must be refused:\n{text}\n--- read as {c:?}"),
        Err(e) => e,
    }
}

fn on_fake(config: Config) -> Registry<FakeClock> {
    Registry::builder(config)
        .runtime(FakeClock::new())
        .build()
        .unwrap_or_else(|e| panic!("registry refused: {e}"))
}

fn names<T>(list: Vec<(Name, T)>) -> Vec<String> {
    list.into_iter()
        .map(|(n, _)| n.as_str().to_owned())
        .collect()
}

/// Rates are kept in parts per million: read back, they are within float noise of the value.
fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12
}

/// `ppm` parts per million as a rate, exactly as kept.
fn rate(ppm: u64) -> f64 {
    f64::from(u32::try_from(ppm).expect("a rate in ppm fits u32")) / 1e6
}

/// `ppm` parts per million written as a TOML float, exactly.
fn rate_text(ppm: u64) -> String {
    if ppm >= 1_000_000 {
        format!("1.{:06}", ppm - 1_000_000)
    } else {
        format!("0.{ppm:06}")
    }
}

/// The settings read back: enabled, then latency, error, hang and alter rates, and the latency.
fn same_settings(s: &ChaosSettings, want: (bool, [f64; 4], Duration)) -> bool {
    let (enabled, [latency_rate, error, hang, alter], latency) = want;
    s.enabled == enabled
        && close(s.latency_rate, latency_rate)
        && close(s.error_rate, error)
        && close(s.hang_rate, hang)
        && close(s.alter_rate, alter)
        && (close(latency_rate, 0.0) || s.latency == latency)
}

fn snapshot(s: &ChaosSettings) -> (bool, [f64; 4], Duration) {
    (
        s.enabled,
        [s.latency_rate, s.error_rate, s.hang_rate, s.alter_rate],
        s.latency,
    )
}

fn is_rule(err: &Invalid, pred: impl Fn(&ConfigError) -> bool) -> bool {
    matches!(err.problem(), Problem::Rule(rule) if pred(rule))
}

// ---------------------------------------------------------------------------------------------
// Rates at the edges, through TOML
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Want {
    Kept(f64),
    OutOfRange,
    NotFinite,
}

// Doc (chaos module): "a rate is 0 or within [0.000001, 1], rounded to the nearest part per
// million (0.1234567 is kept as 123,457 parts, and Chaos::settings reports it so); NaN,
// infinities, negative rates, rates above 1 and nonzero rates below one part per million are
// refused with a typed ConfigError"; (config module) "the first bad value is reported with its
// key path"; (ChaosConfig) "Rates are shares of calls (0, or within [0.000001, 1], kept in
// parts per million)".
#[test]
fn every_rate_key_at_the_edges_is_kept_to_the_ppm_or_refused_at_its_key() {
    let edges: &[(&str, Want)] = &[
        ("0", Want::Kept(0.0)),
        ("0.0", Want::Kept(0.0)),
        ("1e-6", Want::Kept(1e-6)),
        ("0.000001", Want::Kept(1e-6)),
        ("0.0000014", Want::Kept(1e-6)),
        ("0.0000016", Want::Kept(2e-6)),
        ("0.1234567", Want::Kept(0.123_457)),
        ("0.1234564", Want::Kept(0.123_456)),
        ("0.9999994", Want::Kept(0.999_999)),
        ("0.9999996", Want::Kept(1.0)),
        ("1", Want::Kept(1.0)),
        ("1.0", Want::Kept(1.0)),
        ("0.000_001", Want::Kept(1e-6)),
        ("1E-6", Want::Kept(1e-6)),
        ("+0.5", Want::Kept(0.5)),
        ("5e-1", Want::Kept(0.5)),
        ("1_000e-9", Want::Kept(1e-6)),
        ("1e-7", Want::OutOfRange),
        ("0.00000099", Want::OutOfRange),
        ("5e-324", Want::OutOfRange),
        ("1.0000001", Want::OutOfRange),
        ("1.000000000000001", Want::OutOfRange),
        ("2", Want::OutOfRange),
        ("1e308", Want::OutOfRange),
        ("-1e-6", Want::OutOfRange),
        ("-0.5", Want::OutOfRange),
        ("-1", Want::OutOfRange),
        ("nan", Want::NotFinite),
        ("-nan", Want::NotFinite),
        ("inf", Want::NotFinite),
        ("+inf", Want::NotFinite),
        ("-inf", Want::NotFinite),
    ];
    for field in ["latency_rate", "error_rate", "hang_rate", "alter_rate"] {
        for &(value, want) in edges {
            let text =
                format!("[instances.a.chaos]\nseed = 1\nlatency = \"1ms\"\n{field} = {value}\n");
            match want {
                Want::Kept(kept) => {
                    let config = parse(&text);
                    let registry = on_fake(config.clone());
                    let from_registry = registry.chaos("a").unwrap().settings();
                    let built = config
                        .instance("a")
                        .unwrap()
                        .chaos()
                        .unwrap()
                        .build()
                        .unwrap()
                        .settings();
                    for s in [from_registry, built] {
                        let got = match field {
                            "latency_rate" => s.latency_rate,
                            "error_rate" => s.error_rate,
                            "hang_rate" => s.hang_rate,
                            _ => s.alter_rate,
                        };
                        assert!(
                            close(got, kept),
                            "{field} = {value}: kept {got}, want {kept}"
                        );
                        let others = s.latency_rate + s.error_rate + s.hang_rate + s.alter_rate;
                        assert!(close(others, kept), "{field} = {value}: {s:?}");
                    }
                }
                Want::OutOfRange | Want::NotFinite => {
                    let err = refused(&text);
                    assert_eq!(
                        err.path(),
                        format!("instances.a.chaos.{field}"),
                        "{field} = {value}: {err}"
                    );
                    let typed = match want {
                        Want::OutOfRange => {
                            is_rule(&err, |r| matches!(r, ConfigError::OutOfRange { .. }))
                        }
                        _ => is_rule(&err, |r| matches!(r, ConfigError::NotFinite { .. })),
                    };
                    assert!(typed, "{field} = {value}: {want:?} expected, got {err:?}");
                    assert!(
                        err.to_string()
                            .starts_with(&format!("instances.a.chaos.{field}: ")),
                        "{err}"
                    );
                }
            }
        }
    }
}

// Doc (chaos module): "as is an error + hang + alter sum above 10^6 parts"; (build) "Conflict
// when the error, hang and alter rates (as kept, in parts per million) sum to more than 1";
// (ChaosConfig) "error, hang and alter together at most 1". Latency is "drawn independently"
// and is not in the sum.
#[test]
fn the_exclusive_sum_is_judged_on_the_rates_as_kept_not_on_the_floats() {
    let cases: &[(&str, &str, &str, bool)] = &[
        ("0.33", "0.56", "0.11", true),
        // Each rounds down to 333,333: 999,999 parts, though the floats sum past 1.
        ("0.3333334", "0.3333334", "0.3333334", true),
        // 333,334 + 333,334 + 333,333 = 1,000,001 parts, though the floats sum to 1.
        ("0.3333336", "0.3333336", "0.3333328", false),
        // 700,000 + 200,000 + 100,000: exactly 1 as kept; 1.0000004 as floats.
        ("0.7", "0.2", "0.1000004", true),
        ("0.7", "0.2", "0.1000006", false),
        ("0.4999996", "0.5000004", "0", true),
        ("1", "0", "0.000001", false),
        ("0.999999", "0", "0.000001", true),
        ("0", "1", "0", true),
        ("0.5", "0.5", "0", true),
        ("0.5", "0.5", "0.000001", false),
    ];
    for &(error, hang, alter, ok) in cases {
        let text = format!(
            "[instances.a.chaos]\nlatency_rate = 1\nlatency = \"1ms\"\nerror_rate = {error}\nhang_rate = {hang}\nalter_rate = {alter}\n"
        );
        if ok {
            let registry = on_fake(parse(&text));
            let s = registry.chaos("a").unwrap().settings();
            assert!(
                s.error_rate + s.hang_rate + s.alter_rate <= 1.0 + 1e-12,
                "({error}, {hang}, {alter}): {s:?}"
            );
            assert!(
                close(s.latency_rate, 1.0),
                "latency is not in the sum: {s:?}"
            );
        } else {
            let err = refused(&text);
            assert_eq!(
                err.path(),
                "instances.a.chaos",
                "({error}, {hang}, {alter}): {err}"
            );
            assert!(
                is_rule(&err, |r| matches!(r, ConfigError::Conflict { .. })),
                "({error}, {hang}, {alter}): {err:?}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Layering
// ---------------------------------------------------------------------------------------------

// Doc (Config::validate): "The defaults and a config may leave out keys that have no default
// (an instance sets them); an instance that has a section, itself or through its base, may
// not."; (Instance::check) "settings that contradict each other wait for the instance that
// completes them".
#[test]
fn a_sum_past_one_in_a_base_alone_waits_for_the_instance_that_settles_it() {
    let base = "[configs.x.chaos]\nerror_rate = 0.6\nhang_rate = 0.6\n";
    // The base alone, used by nobody: checked for its values only.
    parse(base);
    let settled =
        format!("{base}[instances.a]\nbase = \"x\"\n[instances.a.chaos]\nhang_rate = 0.1\n");
    let registry = on_fake(parse(&settled));
    let s = registry.chaos("a").unwrap().settings();
    assert!(close(s.error_rate, 0.6) && close(s.hang_rate, 0.1), "{s:?}");

    // An instance with its own section that does not settle it.
    let err = refused(&format!(
        "{base}[instances.b]\nbase = \"x\"\n[instances.b.chaos]\nalter_rate = 0\n"
    ));
    assert_eq!(err.path(), "instances.b.chaos", "{err}");
    assert!(
        is_rule(&err, |r| matches!(r, ConfigError::Conflict { .. })),
        "{err:?}"
    );

    // An instance that has the section through its base alone.
    let err = refused(&format!("{base}[instances.c]\nbase = \"x\"\n"));
    assert!(
        ["instances.c.chaos", "configs.x.chaos"].contains(&err.path()),
        "the section's path: {err}"
    );
    assert!(
        is_rule(&err, |r| matches!(r, ConfigError::Conflict { .. })),
        "{err:?}"
    );
}

// Doc (Registry): "Asking for a policy of a name the file does not declare, or a kind the
// instance has no section for, builds it from the layers there are (the defaults, say) on
// first use"; (Registry::breaker, Errors, which chaos shares) "Invalid when the layers for
// `name` do not make a valid breaker (only possible when neither the instance nor its base has
// a breaker section, so the defaults alone make it: a name the file does not declare, say)".
#[test]
fn a_sum_past_one_in_the_defaults_fails_only_the_names_that_take_the_defaults_alone() {
    let text = "[defaults.chaos]\nseed = 3\nerror_rate = 0.6\nhang_rate = 0.6\n\
                [instances.a.chaos]\nhang_rate = 0.4\n\
                [instances.b]\nbreaker = {}\n";
    let config = parse(text);
    let registry = on_fake(config.clone());
    let a = registry.chaos("a").unwrap();
    assert!(close(a.settings().error_rate, 0.6) && close(a.settings().hang_rate, 0.4));
    for name in ["nobody", "b"] {
        let err = registry.chaos(name).unwrap_err();
        assert!(
            is_rule(&err, |r| matches!(r, ConfigError::Conflict { .. })),
            "{name}: {err:?}"
        );
        assert!(err.path().starts_with("defaults.chaos"), "{name}: {err}");
        let err = config.instance(name).unwrap().chaos().unwrap_err();
        assert!(err.path().starts_with("defaults.chaos"), "{name}: {err}");
    }
    assert_eq!(
        names(registry.chaos_handles()),
        ["a"],
        "a refusal holds nothing"
    );
}

// Doc (ChaosConfig): "How long a delayed call is held (not zero with a latency rate)"; (config
// module) "An instance's value for a key is its own, else its base's, else the defaults'";
// (build) "ConfigError::Zero for a zero latency with a latency rate above 0".
#[test]
fn a_latency_and_its_rate_may_come_from_different_layers() {
    let registry = on_fake(parse(
        "[defaults.chaos]\nlatency = \"250ms\"\n[instances.a.chaos]\nlatency_rate = 1\n",
    ));
    let s = registry.chaos("a").unwrap().settings();
    assert!(close(s.latency_rate, 1.0) && s.latency == ms(250), "{s:?}");

    // The instance's zero latency under the defaults' rate: the instance's key is wrong.
    let err = refused(
        "[defaults.chaos]\nlatency_rate = 0.5\nlatency = \"10ms\"\n\
         [instances.a.chaos]\nlatency = \"0s\"\n",
    );
    assert_eq!(err.path(), "instances.a.chaos.latency", "{err}");
    assert!(
        is_rule(&err, |r| matches!(r, ConfigError::Zero { .. })),
        "{err:?}"
    );

    // A zero latency with no rate is fine, in a layer alone or with a zero rate.
    parse("[defaults.chaos]\nlatency = \"0s\"\n");
    parse("[instances.a.chaos]\nlatency = \"0s\"\nlatency_rate = 0\n");

    // The defaults' zero latency under the instance's rate: the value that is wrong is where
    // the topmost layer that sets `latency` sets it.
    let err =
        refused("[defaults.chaos]\nlatency = \"0s\"\n[instances.a.chaos]\nlatency_rate = 0.5\n");
    assert!(
        is_rule(&err, |r| matches!(r, ConfigError::Zero { .. })),
        "{err:?}"
    );
    assert_eq!(err.path(), "defaults.chaos.latency", "{err}");

    // The smallest rate needs a latency too.
    let err = refused("[instances.a.chaos]\nlatency_rate = 0.000001\nlatency = \"0ms\"\n");
    assert_eq!(err.path(), "instances.a.chaos.latency", "{err}");
}

// Doc (ChaosConfig): "Whether it injects at all (default true: a section with rates injects
// them)"; (config module) "An instance's value for a key is its own, else its base's, else the
// defaults', else the policy builder's default."
#[test]
fn enabled_comes_from_the_topmost_layer_that_sets_it_in_every_combination() {
    let choices = [None, Some(false), Some(true)];
    let key = |e: Option<bool>| e.map_or(String::new(), |e| format!("enabled = {e}\n"));
    for defaults in choices {
        for base in choices {
            for own in choices {
                let text = format!(
                    "[defaults.chaos]\nseed = 1\n{}[configs.x.chaos]\n{}\
                     [instances.a]\nbase = \"x\"\n[instances.a.chaos]\nerror_rate = 1\n{}",
                    key(defaults),
                    key(base),
                    key(own)
                );
                let want = own.or(base).or(defaults).unwrap_or(true);
                let chaos = on_fake(parse(&text)).chaos("a").unwrap();
                let what = format!("defaults {defaults:?}, base {base:?}, own {own:?}");
                assert_eq!(chaos.settings().enabled, want, "{what}");
                assert_eq!(chaos.decide().fault, want.then_some(Fault::Error), "{what}");
                assert_eq!(chaos.decided(), u64::from(want), "{what}");
            }
        }
    }
}

// Doc (Registry::reload): "Handles got before the reload are the same policies: they see the
// new settings. ... those of instances it no longer declares are kept, on the layers that
// remain"; (Registry::chaos) "A reload applies the new switch and rates at once".
#[test]
fn a_switch_in_the_defaults_reaches_every_handle_that_does_not_set_its_own() {
    let text = |enabled: bool| {
        format!(
            "[defaults.chaos]\nseed = 5\nenabled = {enabled}\nerror_rate = 1\n\
             [instances.a.chaos]\n\
             [instances.b.chaos]\nenabled = false\n"
        )
    };
    let registry = on_fake(parse(&text(false)));
    let (a, b, x) = (
        registry.chaos("a").unwrap(),
        registry.chaos("b").unwrap(),
        registry.chaos("x").unwrap(),
    );
    for h in [&a, &b, &x] {
        assert!(
            !h.settings().enabled && h.decide().is_none(),
            "{}",
            h.name()
        );
    }
    registry.reload(parse(&text(true))).unwrap();
    assert_eq!(a.decide().fault, Some(Fault::Error));
    assert_eq!(x.decide().fault, Some(Fault::Error));
    assert!(
        !b.settings().enabled && b.decide().is_none(),
        "b sets its own"
    );
    registry.reload(parse(&text(false))).unwrap();
    assert!(a.decide().is_none() && x.decide().is_none());
    assert_eq!((a.decided(), b.decided(), x.decided()), (1, 0, 1));
}

// ---------------------------------------------------------------------------------------------
// Determinism
// ---------------------------------------------------------------------------------------------

// Doc (Chaos, Determinism): "the faults of call `n` are a pure function of (seed, `n`,
// settings)"; (Instance): "Each policy comes out as the same builder code would use".
#[test]
fn a_handle_from_three_layers_replays_as_one_built_in_code() {
    let config = parse(
        "[defaults.chaos]\nseed = 77\nlatency = \"3ms\"\nalter_rate = 0.5\n\
         [configs.x.chaos]\nerror_rate = 0.1234567\nlatency_rate = 0.5\n\
         [instances.a]\nbase = \"x\"\n[instances.a.chaos]\nhang_rate = 0.2\nalter_rate = 0.0000014\n",
    );
    let coded = Chaos::builder()
        .seed(77)
        .latency(0.5, ms(3))
        .error(0.123_457)
        .hang(0.2)
        .alter(0.000_001)
        .build()
        .unwrap();
    let registry = on_fake(config.clone());
    let configured = registry.chaos("a").unwrap();
    let built = config
        .instance("a")
        .unwrap()
        .chaos()
        .unwrap()
        .build()
        .unwrap();
    assert_eq!((configured.seed(), configured.name()), (77, "a"));
    assert_eq!((built.seed(), built.name()), (77, "a"));
    for n in (0..2_000).chain([u64::MAX / 2, u64::MAX - 1, u64::MAX]) {
        let want = coded.decide_nth(n);
        assert_eq!(configured.decide_nth(n), want, "call {n}");
        assert_eq!(built.decide_nth(n), want, "call {n}");
    }
    // Drawing follows the same sequence.
    for n in 0..300 {
        assert_eq!(configured.decide(), coded.decide_nth(n), "call {n}");
    }
    assert_eq!(configured.decided(), 300);
}

// Doc (Registry::chaos): "the seed, fixed while the registry holds the handle, keeps the calls'
// faults replayable"; (reconfigure) "the handle keeps its own [seed], and its call numbers";
// (decided) "the next call is number decided()".
#[test]
fn a_reload_keeps_call_numbers_and_seed_and_later_calls_follow_the_new_rates() {
    let first =
        "[instances.a.chaos]\nseed = 21\nerror_rate = 0.3\nlatency_rate = 0.2\nlatency = \"5ms\"\n";
    let second = |enabled: bool| {
        format!(
            "[instances.a.chaos]\nenabled = {enabled}\nerror_rate = 0.1\nhang_rate = 0.2\nalter_rate = 0.3\nlatency_rate = 0.9\nlatency = \"7ms\"\n"
        )
    };
    let registry = on_fake(parse(first));
    let chaos = registry.chaos("a").unwrap();
    let before = Chaos::builder()
        .seed(21)
        .error(0.3)
        .latency(0.2, ms(5))
        .build()
        .unwrap();
    let after = Chaos::builder()
        .seed(21)
        .error(0.1)
        .hang(0.2)
        .alter(0.3)
        .latency(0.9, ms(7))
        .build()
        .unwrap();
    for n in 0..37 {
        assert_eq!(chaos.decide(), before.decide_nth(n), "call {n}");
    }
    registry.reload(parse(&second(true))).unwrap();
    assert_eq!((chaos.seed(), chaos.decided()), (21, 37));
    for n in 37..100 {
        assert_eq!(chaos.decide(), after.decide_nth(n), "call {n}");
    }
    registry.reload(parse(&second(false))).unwrap();
    for _ in 0..5 {
        assert!(chaos.decide().is_none());
    }
    assert_eq!(chaos.decided(), 100, "switched off: no number drawn");
    registry.reload(parse(&second(true))).unwrap();
    assert_eq!(chaos.decide(), after.decide_nth(100));
    assert_eq!((chaos.seed(), chaos.decided()), (21, 101));
}

// Doc (Registry): "a name the file does not declare gets the defaults alone"; (Chaos) "a pure
// function of (seed, n, settings)" (not of the name); "Policies are handles to shared state".
#[test]
fn undeclared_names_get_the_defaults_and_replay_the_same_sequence() {
    let registry = on_fake(parse(
        "[defaults.chaos]\nseed = 7\nerror_rate = 0.25\nlatency_rate = 0.5\nlatency = \"4ms\"\n",
    ));
    assert!(registry.chaos_handles().is_empty(), "nothing declared");
    let coded = Chaos::builder()
        .seed(7)
        .error(0.25)
        .latency(0.5, ms(4))
        .build()
        .unwrap();
    let x = registry.chaos("x").unwrap();
    let y = registry.chaos("y").unwrap();
    assert_eq!((x.name(), y.name(), x.seed(), y.seed()), ("x", "y", 7, 7));
    assert!((0..500).all(|n| x.decide_nth(n) == coded.decide_nth(n)));
    assert!((0..500).all(|n| y.decide_nth(n) == coded.decide_nth(n)));
    // The same handle for everyone who asks: one call counter.
    let _ = x.decide();
    assert_eq!(registry.chaos("x").unwrap().decided(), 1);
    assert_eq!(y.decided(), 0);
    assert_eq!(names(registry.chaos_handles()), ["x", "y"]);

    // Without a chaos section anywhere: enabled, injecting nothing, drawing nothing.
    let bare = on_fake(Config::default());
    let z = bare.chaos("z").unwrap();
    let s = z.settings();
    assert!(same_settings(&s, (true, [0.0; 4], Duration::ZERO)), "{s:?}");
    assert!(z.decide().is_none());
    assert_eq!(z.decided(), 0);
}

// Doc (Registry): "Building the registry ... builds every policy an instance has (its own
// sections and its base's), so they are there to list from the start"; (config module) "An
// instance *has* a policy when it or its base has that section (an empty `breaker = {}` is
// enough); the defaults only fill sections in."
#[test]
fn the_handles_listed_from_the_start_are_those_of_instances_with_a_section_or_a_base_with_one() {
    let registry = on_fake(parse(
        "[defaults.chaos]\nseed = 1\nerror_rate = 0.5\n\
         [configs.x.chaos]\nhang_rate = 0.1\n\
         [instances.d]\nchaos = {}\n\
         [instances.a.chaos]\nalter_rate = 0.1\n\
         [instances.b]\nbreaker = {}\n\
         [instances.c]\nbase = \"x\"\n\
         [instances.\"api.v2\".chaos]\n",
    ));
    assert_eq!(names(registry.chaos_handles()), ["a", "api.v2", "c", "d"]);
    let c = registry.chaos("c").unwrap();
    assert!(close(c.settings().hang_rate, 0.1) && close(c.settings().error_rate, 0.5));
    let d = registry.chaos("d").unwrap();
    assert!(
        close(d.settings().error_rate, 0.5),
        "an empty section takes the defaults"
    );
    assert_eq!(names(registry.chaos_handles()).len(), 4, "already held");
    registry.chaos("b").unwrap();
    assert_eq!(
        names(registry.chaos_handles()),
        ["a", "api.v2", "b", "c", "d"]
    );
}

// ---------------------------------------------------------------------------------------------
// The seed
// ---------------------------------------------------------------------------------------------

// Doc (Problem::Fixed): "The setting cannot change while the registry holds what it shapes
// (... a fault injector's `seed`): restart to apply it"; (Invalid) "Nothing is built from a
// configuration that gives one: a registry keeps its old policies"; (reload) "the old one stays
// in force, whole".
#[test]
fn a_reload_changing_any_held_seed_is_refused_whole() {
    let old = "[instances.a.chaos]\nseed = 1\nerror_rate = 0.5\nenabled = false\n\
               [instances.b.chaos]\nseed = 2\nhang_rate = 0.2\n\
               [instances.b.bulkhead]\nmax_concurrent = 2\n";
    let registry = on_fake(parse(old));
    let (a, b) = (registry.chaos("a").unwrap(), registry.chaos("b").unwrap());
    let bulkhead = registry.bulkhead("b").unwrap();
    let check_untouched = |what: &str| {
        assert!(
            same_settings(&a.settings(), (false, [0.0, 0.5, 0.0, 0.0], Duration::ZERO)),
            "{what}: {:?}",
            a.settings()
        );
        assert!(
            same_settings(&b.settings(), (true, [0.0, 0.0, 0.2, 0.0], Duration::ZERO)),
            "{what}: {:?}",
            b.settings()
        );
        assert_eq!(bulkhead.capacity(), 2, "{what}");
        assert_eq!(*registry.config(), parse(old), "{what}");
        assert_eq!((a.seed(), b.seed()), (1, 2), "{what}");
        assert!(a.decide().is_none(), "{what}: still switched off");
    };

    let err = registry
        .reload(parse(
            "[instances.a.chaos]\nseed = 9\nerror_rate = 0.1\nenabled = true\n\
             [instances.b.chaos]\nseed = 2\nhang_rate = 0.7\n\
             [instances.b.bulkhead]\nmax_concurrent = 5\n",
        ))
        .unwrap_err();
    assert_eq!(err.path(), "instances.a.chaos.seed", "{err}");
    assert!(matches!(err.problem(), Problem::Fixed), "{err:?}");
    check_untouched("a's seed");

    // The second handle's seed is checked as well.
    let err = registry
        .reload(parse(
            "[instances.a.chaos]\nseed = 1\nerror_rate = 0.1\nenabled = true\n\
             [instances.b.chaos]\nseed = 3\nhang_rate = 0.7\n\
             [instances.b.bulkhead]\nmax_concurrent = 5\n",
        ))
        .unwrap_err();
    assert_eq!(err.path(), "instances.b.chaos.seed", "{err}");
    assert!(matches!(err.problem(), Problem::Fixed), "{err:?}");
    check_untouched("b's seed");

    // The same seeds written again are no change.
    registry
        .reload(parse(
            "[instances.a.chaos]\nseed = 1\nerror_rate = 0.1\nenabled = true\n\
             [instances.b.chaos]\nseed = 2\nhang_rate = 0.7\n\
             [instances.b.bulkhead]\nmax_concurrent = 5\n",
        ))
        .unwrap();
    assert!(close(a.settings().error_rate, 0.1) && a.settings().enabled);
    assert!(close(b.settings().hang_rate, 0.7));
    assert_eq!(bulkhead.capacity(), 5);
}

// Doc (ChaosConfig): "The seed its draws start from (default: one drawn when it is built)";
// (Chaos::seed) "the one drawn for it: log it to replay a run"; the seed "is fixed while the
// registry holds the handle".
#[test]
fn a_drawn_seed_is_as_fixed_as_a_written_one() {
    let registry = on_fake(parse("[instances.a.chaos]\nerror_rate = 0.5\n"));
    let chaos = registry.chaos("a").unwrap();
    let drawn = chaos.seed();
    let with_seed = |seed: u64| {
        let mut c = parse("[instances.a.chaos]\nerror_rate = 0.25\n");
        c.instances
            .get_mut("a")
            .unwrap()
            .chaos
            .as_mut()
            .unwrap()
            .seed = Some(seed);
        c
    };
    let err = registry.reload(with_seed(drawn ^ 1)).unwrap_err();
    assert_eq!(err.path(), "instances.a.chaos.seed", "{err}");
    assert!(matches!(err.problem(), Problem::Fixed), "{err:?}");
    assert!(close(chaos.settings().error_rate, 0.5), "refused whole");

    registry.reload(with_seed(drawn)).unwrap();
    assert!(close(chaos.settings().error_rate, 0.25));
    registry
        .reload(parse("[instances.a.chaos]\nerror_rate = 0.75\n"))
        .unwrap();
    assert_eq!(chaos.seed(), drawn, "omitting the seed keeps it");
    let replay = Chaos::builder().seed(drawn).error(0.75).build().unwrap();
    assert!((0..200).all(|n| chaos.decide_nth(n) == replay.decide_nth(n)));
}

// Doc (Registry::chaos): "the seed, fixed while the registry holds the handle"; (reload)
// "those of instances it no longer declares are kept, on the layers that remain (the defaults,
// say)"; a handle held for an undeclared name is held all the same.
#[test]
fn the_defaults_seed_is_fixed_once_a_handle_on_the_defaults_is_held() {
    let registry = on_fake(parse("[defaults.chaos]\nseed = 42\n"));
    // Nothing held yet: the seed may change.
    registry
        .reload(parse("[defaults.chaos]\nseed = 43\n"))
        .unwrap();
    let x = registry.chaos("x").unwrap();
    assert_eq!(x.seed(), 43);
    let err = registry
        .reload(parse("[defaults.chaos]\nseed = 44\nerror_rate = 1\n"))
        .unwrap_err();
    assert!(matches!(err.problem(), Problem::Fixed), "{err:?}");
    assert_eq!(err.path(), "defaults.chaos.seed", "{err}");
    assert!(x.decide().is_none(), "refused whole: no error rate");
    registry
        .reload(parse("[defaults.chaos]\nerror_rate = 1\n"))
        .unwrap();
    assert_eq!(x.seed(), 43, "omitting the seed keeps it");
    assert_eq!(x.decide().fault, Some(Fault::Error));
}

// Doc: "Where the topmost layer that sets `seed` sets it"; the check is "where a file's seed
// differs from the handle's" — the same value moved to another layer is no change.
#[test]
fn the_same_seed_moved_between_layers_is_no_change() {
    let registry = on_fake(parse("[instances.a.chaos]\nseed = 5\nerror_rate = 0.5\n"));
    let chaos = registry.chaos("a").unwrap();
    registry
        .reload(parse(
            "[defaults.chaos]\nseed = 5\n[instances.a.chaos]\nerror_rate = 0.4\n",
        ))
        .unwrap();
    registry
        .reload(parse(
            "[configs.k.chaos]\nseed = 5\n[instances.a]\nbase = \"k\"\n[instances.a.chaos]\nerror_rate = 0.3\n",
        ))
        .unwrap();
    // The topmost layer wins: the instance's 5 over the defaults' 6.
    registry
        .reload(parse(
            "[defaults.chaos]\nseed = 6\n[instances.a.chaos]\nseed = 5\nerror_rate = 0.2\n",
        ))
        .unwrap();
    assert!(close(chaos.settings().error_rate, 0.2));
    let err = registry
        .reload(parse(
            "[defaults.chaos]\nseed = 5\n[instances.a.chaos]\nseed = 6\nerror_rate = 0.1\n",
        ))
        .unwrap_err();
    assert_eq!(err.path(), "instances.a.chaos.seed", "{err}");
    assert!(matches!(err.problem(), Problem::Fixed), "{err:?}");
    assert!(close(chaos.settings().error_rate, 0.2));
    assert_eq!(chaos.seed(), 5);
    // A seed held from a base: a change there is refused where the base sets it.
    registry
        .reload(parse(
            "[configs.k.chaos]\nseed = 5\n[instances.a]\nbase = \"k\"\n[instances.a.chaos]\nerror_rate = 0.3\n",
        ))
        .unwrap();
    let err = registry
        .reload(parse(
            "[configs.k.chaos]\nseed = 7\n[instances.a]\nbase = \"k\"\n[instances.a.chaos]\nerror_rate = 0.4\n",
        ))
        .unwrap_err();
    assert!(matches!(err.problem(), Problem::Fixed), "{err:?}");
    assert_eq!(err.path(), "configs.k.chaos.seed", "{err}");
    assert!(close(chaos.settings().error_rate, 0.3));
}

// Doc (reload): "those of instances it no longer declares are kept, on the layers that remain
// (the defaults, say)"; the seed stays fixed for them.
#[test]
fn a_handle_whose_instance_is_removed_falls_back_to_the_defaults_and_keeps_its_seed() {
    let registry = on_fake(parse(
        "[defaults.chaos]\nerror_rate = 0.1\n[instances.a.chaos]\nseed = 5\nhang_rate = 0.5\n",
    ));
    let a = registry.chaos("a").unwrap();
    registry
        .reload(parse("[defaults.chaos]\nerror_rate = 0.1\n"))
        .unwrap();
    let s = a.settings();
    assert!(
        same_settings(&s, (true, [0.0, 0.1, 0.0, 0.0], Duration::ZERO)),
        "{s:?}"
    );
    assert_eq!(a.seed(), 5);
    assert_eq!(names(registry.chaos_handles()), ["a"], "still held");
    let err = registry
        .reload(parse("[defaults.chaos]\nseed = 6\n"))
        .unwrap_err();
    assert!(matches!(err.problem(), Problem::Fixed), "{err:?}");
    assert!(close(a.settings().error_rate, 0.1));
}

// ---------------------------------------------------------------------------------------------
// Reloads: all at once, checked whole
// ---------------------------------------------------------------------------------------------

/// A state of the section, in parts per million.
#[derive(Clone, Copy, Debug)]
struct St {
    enabled: bool,
    latency: u64,
    error: u64,
    hang: u64,
    alter: u64,
    latency_ms: u64,
}

impl St {
    fn text(&self, name: &str) -> String {
        format!(
            "[instances.{name}.chaos]\nenabled = {}\nlatency_rate = {}\nlatency = \"{}ms\"\nerror_rate = {}\nhang_rate = {}\nalter_rate = {}\n",
            self.enabled,
            rate_text(self.latency),
            self.latency_ms,
            rate_text(self.error),
            rate_text(self.hang),
            rate_text(self.alter),
        )
    }

    fn want(&self) -> (bool, [f64; 4], Duration) {
        (
            self.enabled,
            [
                rate(self.latency),
                rate(self.error),
                rate(self.hang),
                rate(self.alter),
            ],
            ms(self.latency_ms),
        )
    }

    fn coded(&self, seed: u64) -> Chaos {
        Chaos::builder()
            .seed(seed)
            .enabled(self.enabled)
            .latency(rate(self.latency), ms(self.latency_ms))
            .error(rate(self.error))
            .hang(rate(self.hang))
            .alter(rate(self.alter))
            .build()
            .unwrap()
    }
}

// Doc (Chaos::reconfigure): "checked together, so moving a share of calls from one fault to
// another never passes through a sum above 1"; (Registry::chaos) "A reload applies the new
// switch and rates at once"; (reload) "an invalid configuration ... is refused with its error,
// and the old one stays in force, whole".
#[test]
fn seeded_reloads_trading_shares_are_applied_whole_and_refused_only_when_the_end_is_invalid() {
    const SEED: u64 = 11;
    let mut rng = SplitMix64::new(0xC4A0_5EED);
    let start = St {
        enabled: true,
        latency: 0,
        error: 1_000_000,
        hang: 0,
        alter: 0,
        latency_ms: 1,
    };
    let registry = on_fake(parse(&format!(
        "[defaults.chaos]\nseed = {SEED}\n{}",
        start.text("a")
    )));
    let chaos = registry.chaos("a").unwrap();
    let mut current = start;
    let (mut applied, mut refusals, mut full) = (0, 0, 0);
    for step in 0..400 {
        let e = rng.below_or_equal(1_000_000);
        let h = rng.below_or_equal(1_000_000 - e);
        let rest = 1_000_000 - e - h;
        let a = if rng.below_or_equal(1) == 0 {
            rest
        } else {
            rng.below_or_equal(rest)
        };
        let (error, hang, alter) = match rng.below_or_equal(5) {
            0 => (e, h, a),
            1 => (e, a, h),
            2 => (h, e, a),
            3 => (h, a, e),
            4 => (a, e, h),
            _ => (a, h, e),
        };
        let mut next = St {
            enabled: rng.below_or_equal(4) != 0,
            latency: rng.below_or_equal(1_000_000),
            error,
            hang,
            alter,
            latency_ms: 1 + rng.below_or_equal(99),
        };
        let invalid = rng.below_or_equal(4) == 0;
        if invalid {
            // One part past certainty, every share still within [0, 1].
            let others = next.hang + next.alter;
            if others == 0 {
                next.error = 1_000_000;
                next.hang = 1;
            } else {
                next.error = 1_000_001 - others;
            }
        }
        let text = format!("[defaults.chaos]\nseed = {SEED}\n{}", next.text("a"));
        let decided = chaos.decided();
        let outcome = registry.reload(raw(&text));
        if invalid {
            let err = outcome.expect_err("a sum past 1 must be refused");
            assert_eq!(err.path(), "instances.a.chaos", "step {step}: {err}");
            refusals += 1;
        } else {
            outcome.unwrap_or_else(|e| panic!("step {step}: {next:?} refused: {e}"));
            current = next;
            applied += 1;
            if current.error + current.hang + current.alter == 1_000_000 {
                full += 1;
            }
        }
        let s = chaos.settings();
        assert!(
            same_settings(&s, current.want()),
            "step {step}: {s:?} vs {current:?}"
        );
        assert_eq!(
            chaos.decided(),
            decided,
            "step {step}: a reload draws nothing"
        );
        let coded = current.coded(SEED);
        for _ in 0..3 {
            let n = chaos.decided();
            assert_eq!(chaos.decide(), coded.decide_nth(n), "step {step}, call {n}");
        }
    }
    assert!(
        applied > 200 && refusals > 50 && full > 80,
        "{applied} {refusals} {full}"
    );
}

// Doc (reload): "The new configuration is validated first ... an invalid configuration ... is
// refused with its error, and the old one stays in force, whole" — a configuration built in
// code (or read with serde) never went through `from_toml`.
#[test]
fn a_reload_validates_a_configuration_built_in_code() {
    let registry = on_fake(parse("[instances.a.chaos]\nseed = 1\nerror_rate = 0.5\n"));
    let chaos = registry.chaos("a").unwrap();
    type Edit = dyn Fn(&mut ChaosConfig);
    let with = |edit: &Edit| {
        let mut section = ChaosConfig::default();
        edit(&mut section);
        let mut policies = Policies::default();
        policies.chaos = Some(section);
        let mut config = Config::default();
        config.instances.insert("a".into(), policies);
        config
    };
    let cases: [(&Edit, &str); 6] = [
        (
            &|c: &mut ChaosConfig| c.error_rate = Some(f64::NAN),
            "instances.a.chaos.error_rate",
        ),
        (
            &|c: &mut ChaosConfig| c.hang_rate = Some(f64::NEG_INFINITY),
            "instances.a.chaos.hang_rate",
        ),
        (
            &|c: &mut ChaosConfig| c.alter_rate = Some(1e-9),
            "instances.a.chaos.alter_rate",
        ),
        (
            &|c: &mut ChaosConfig| c.latency_rate = Some(0.5),
            "instances.a.chaos.latency",
        ),
        (
            &|c: &mut ChaosConfig| {
                c.latency_rate = Some(0.5);
                c.latency = Some(Duration::ZERO);
            },
            "instances.a.chaos.latency",
        ),
        (
            &|c: &mut ChaosConfig| {
                c.error_rate = Some(0.75);
                c.alter_rate = Some(0.25);
                c.hang_rate = Some(0.000_001);
            },
            "instances.a.chaos",
        ),
    ];
    for (edit, path) in cases {
        let config = with(edit);
        let err = registry.reload(config.clone()).unwrap_err();
        assert_eq!(err.path(), path, "{err}");
        assert!(matches!(err.problem(), Problem::Rule(_)), "{err:?}");
        assert_eq!(config.validate(), Err(err), "reload and validate agree");
        assert!(close(chaos.settings().error_rate, 0.5) && chaos.seed() == 1);
    }
    // The switch and rates of a valid one, at once.
    registry
        .reload(with(&|c| {
            c.enabled = Some(false);
            c.hang_rate = Some(1.0);
        }))
        .unwrap();
    let s = chaos.settings();
    assert!(
        same_settings(&s, (false, [0.0, 0.0, 1.0, 0.0], Duration::ZERO)),
        "{s:?}"
    );
}

// Doc (Chaos::reconfigure): "Applies settings' switch and rates in place, all at once ... Its
// seed, name and runtime are not read: the handle keeps its own, and its call numbers";
// "Errors: As ChaosBuilder::build; the settings in force are then kept".
#[test]
fn reconfiguring_a_registry_handle_reads_only_the_switch_and_rates() {
    let registry = on_fake(parse(
        "[instances.a.chaos]\nseed = 3\nerror_rate = 0.6\nhang_rate = 0.4\n",
    ));
    let chaos = registry.chaos("a").unwrap();
    for _ in 0..5 {
        let _ = chaos.decide();
    }
    chaos
        .reconfigure(
            Chaos::builder()
                .seed(99)
                .name("zzz")
                .runtime(FakeClock::new())
                .error(0.4)
                .hang(0.6),
        )
        .unwrap();
    assert_eq!((chaos.seed(), chaos.name(), chaos.decided()), (3, "a", 5));
    let coded = Chaos::builder()
        .seed(3)
        .error(0.4)
        .hang(0.6)
        .build()
        .unwrap();
    assert_eq!(chaos.decide(), coded.decide_nth(5));

    let kept = snapshot(&chaos.settings());
    let bad: [(Result<(), ConfigError>, &str); 5] = [
        (
            chaos.reconfigure(Chaos::builder().error(0.5).hang(0.5).alter(0.000_001)),
            "a sum past 1",
        ),
        (
            chaos.reconfigure(Chaos::builder().latency(0.5, Duration::ZERO)),
            "a zero latency",
        ),
        (chaos.reconfigure(Chaos::builder().alter(f64::NAN)), "NaN"),
        (chaos.reconfigure(Chaos::builder().error(1e-7)), "1e-7"),
        (
            chaos.reconfigure(Chaos::builder().hang(1.5).enabled(false)),
            "1.5",
        ),
    ];
    for (result, what) in bad {
        assert!(result.is_err(), "{what} must be refused");
        assert!(same_settings(&chaos.settings(), kept), "{what}: kept whole");
    }
    // The switch is applied with the rates: a disabled handle is enabled by a builder's default.
    chaos.set_enabled(false);
    chaos.reconfigure(Chaos::builder().alter(1.0)).unwrap();
    assert_eq!(chaos.decide().fault, Some(Fault::Alter));
    // A reload of the file puts the file's settings back.
    registry
        .reload(parse(
            "[instances.a.chaos]\nseed = 3\nerror_rate = 0.6\nhang_rate = 0.4\n",
        ))
        .unwrap();
    assert!(same_settings(
        &chaos.settings(),
        (true, [0.0, 0.6, 0.4, 0.0], Duration::ZERO)
    ));
    assert_eq!(chaos.decided(), 7);
}

// ---------------------------------------------------------------------------------------------
// Key paths and syntax
// ---------------------------------------------------------------------------------------------

// Doc (Invalid): "with the key path of what is wrong (`instances.payments.breaker.failure_rate`)";
// (config module) "A name as a key path writes it: bare when TOML would write it bare, quoted
// otherwise (`instances."api.v2".breaker`)"; (Config::validate) "in the order: ... the
// defaults, each config by name, each instance by name".
#[test]
fn refusals_name_the_layer_and_key_with_quoted_names() {
    let cases: &[(&str, &str)] = &[
        (
            "[defaults.chaos]\nerror_rate = 1e-7\n",
            "defaults.chaos.error_rate",
        ),
        (
            "[configs.slow.chaos]\nalter_rate = -0.5\n",
            "configs.slow.chaos.alter_rate",
        ),
        (
            "[instances.\"api.v2\".chaos]\nhang_rate = inf\n",
            "instances.\"api.v2\".chaos.hang_rate",
        ),
        (
            "[instances.\"my svc\".chaos]\nerror_rate = 0.7\nhang_rate = 0.7\n",
            "instances.\"my svc\".chaos",
        ),
        (
            "[instances.a]\nbase = \"slow\"\n[configs.slow.chaos]\nlatency_rate = 2\n",
            "configs.slow.chaos.latency_rate",
        ),
        (
            "[configs.slow.chaos]\nerror_rate = 0.5\n[instances.a]\nbase = \"slow\"\n\
             [instances.a.chaos]\nerror_rate = nan\n",
            "instances.a.chaos.error_rate",
        ),
        // The defaults come first, then configs, then instances.
        (
            "[instances.a.chaos]\nerror_rate = 2\n[defaults.chaos]\nhang_rate = -1\n\
             [configs.c.chaos]\nalter_rate = 2\n",
            "defaults.chaos.hang_rate",
        ),
        (
            "[instances.a.chaos]\nerror_rate = 2\n[configs.c.chaos]\nalter_rate = 2\n",
            "configs.c.chaos.alter_rate",
        ),
    ];
    for &(text, path) in cases {
        let err = refused(text);
        assert_eq!(err.path(), path, "{text}\n{err}");
        assert!(err.to_string().starts_with(&format!("{path}: ")), "{err}");
        assert!(matches!(err.problem(), Problem::Rule(_)), "{err:?}");
    }

    // Instance::chaos on a configuration never validated: the key of the layer that set it.
    let config =
        raw("[configs.slow.chaos]\nerror_rate = nan\n[instances.a]\nbase = \"slow\"\nchaos = {}\n");
    let err = config.instance("a").unwrap().chaos().unwrap_err();
    assert_eq!(err.path(), "configs.slow.chaos.error_rate", "{err}");
    let config = raw("[instances.\"a.b\".chaos]\nalter_rate = 1.5\n");
    let err = config.instance("a.b").unwrap().chaos().unwrap_err();
    assert_eq!(err.path(), "instances.\"a.b\".chaos.alter_rate", "{err}");
    let err = raw("[instances.a]\nbase = \"gone\"\n[instances.a.chaos]\n")
        .instance("a")
        .unwrap_err();
    assert!(matches!(err.problem(), Problem::UnknownBase(_)), "{err:?}");
}

// Doc (Problem::Syntax): "The text is not the format (bad syntax, an unknown key, a value of
// the wrong type); the parser's message, which says where"; (Invalid::path) "empty for a
// syntax error".
#[test]
fn values_of_the_wrong_type_are_syntax_errors_with_an_empty_path() {
    for body in [
        "enabled = 1",
        "enabled = \"true\"",
        "seed = -1",
        "seed = 1.5",
        "seed = \"7\"",
        "error_rate = \"0.5\"",
        "hang_rate = true",
        "latency = 5",
        "latency = \"5 parsecs\"",
        "latency = \"-5ms\"",
        "latency = \"\"",
        "latency = \"off\"",
        "error_rate = 0.5\nerror_rate = 0.6",
        "rate = 0.5",
        "base = \"x\"",
    ] {
        let text = format!("[instances.a.chaos]\n{body}\n");
        let err = refused(&text);
        assert!(
            matches!(err.problem(), Problem::Syntax(_)),
            "{body}: {err:?}"
        );
        assert_eq!(err.path(), "", "{body}: {err}");
    }
    let err = refused("[instances.a]\nchaos = 3\n");
    assert!(matches!(err.problem(), Problem::Syntax(_)), "{err:?}");
    let err = refused("[instances.a.chaos]\nerror_rat = 0.5\n");
    assert!(err.to_string().contains("error_rat"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Validation against building, and printing back
// ---------------------------------------------------------------------------------------------

// Doc (Config::from_toml): "Reads a TOML configuration and validates it"; (validate) "Checks
// every layer and every instance through the policy builders"; (RegistryBuilder::build)
// "Validates the configuration and builds every policy its instances have. Errors: The
// configuration's first Invalid setting"; (reload) "The new configuration is validated first".
#[test]
fn validate_from_toml_registry_build_and_reload_agree_on_chaos_sections() {
    let texts = [
        "[instances.a.chaos]\nerror_rate = 0.5\n",
        "[instances.a.chaos]\nerror_rate = 0.5\nhang_rate = 0.5000006\n",
        "[instances.a.chaos]\nerror_rate = 0.5\nhang_rate = 0.5000004\n",
        "[defaults.chaos]\nerror_rate = 0.9\nalter_rate = 0.9\n[instances.a.chaos]\nalter_rate = 0.1\n",
        "[defaults.chaos]\nerror_rate = 0.9\nalter_rate = 0.9\n[instances.a]\nbreaker = {}\n",
        "[defaults.chaos]\nerror_rate = 0.9\nalter_rate = 0.9\n[instances.a.chaos]\n",
        "[configs.x.chaos]\nhang_rate = 0.9\nalter_rate = 0.9\n[instances.a]\nbase = \"x\"\n",
        "[configs.x.chaos]\nhang_rate = 0.9\nalter_rate = 0.9\n[instances.a]\nbase = \"x\"\n[instances.a.chaos]\nhang_rate = 0\n",
        "[defaults.chaos]\nlatency_rate = 0.5\n[instances.a.chaos]\nlatency = \"1ms\"\n",
        "[defaults.chaos]\nlatency_rate = 0.5\n[instances.a.chaos]\nerror_rate = 0.1\n",
        "[defaults.chaos]\nlatency = \"0s\"\n[instances.a.chaos]\nlatency_rate = 0.1\n",
        "[instances.a.chaos]\nlatency_rate = 1e-7\nlatency = \"1ms\"\n",
        "[instances.a.chaos]\nlatency_rate = 1\nlatency = \"18446744073709551615ns\"\n",
        "[instances.a.chaos]\nlatency_rate = 1\nlatency = \"6000000h\"\n",
        "[instances.a.chaos]\nenabled = false\nerror_rate = 2\n",
        "[instances.a.chaos]\nseed = 0\nalter_rate = 0.9999996\nerror_rate = 0.0000004\n",
        "[instances.a.chaos]\nseed = 0\nalter_rate = 0.9999996\nerror_rate = 0.000001\n",
        "[defaults.chaos]\nhang_rate = -0.0\n",
        "[configs.unused.chaos]\nerror_rate = 0.8\nhang_rate = 0.8\n",
        "[configs.unused.chaos]\nerror_rate = 1.2\n",
    ];
    for text in texts {
        let Ok(config) = toml::from_str::<Config>(text) else {
            // Values serde itself refuses (durations): from_toml calls them syntax.
            let err = refused(text);
            assert!(
                matches!(err.problem(), Problem::Syntax(_)),
                "{text}\n{err:?}"
            );
            continue;
        };
        let checked = config.validate();
        let built = Registry::builder(config.clone())
            .runtime(FakeClock::new())
            .build()
            .map(drop);
        let read = Config::from_toml(text).map(drop);
        assert_eq!(checked, built, "validate vs build:\n{text}");
        assert_eq!(checked, read, "validate vs from_toml:\n{text}");
        let registry = on_fake(Config::default());
        let reloaded = registry.reload(config.clone()).map(drop);
        assert_eq!(checked, reloaded, "validate vs reload:\n{text}");
        if checked.is_ok() {
            // Every instance with a section makes a handle, in the registry and in code.
            let registry = on_fake(config.clone());
            for (name, _) in registry.chaos_handles() {
                config
                    .instance(name.as_str())
                    .unwrap()
                    .chaos()
                    .unwrap()
                    .build()
                    .unwrap();
            }
        }
    }
}

// Doc (config module): "[Config] is Deserialize ... and Serialize, so an admin endpoint can
// print the configuration in force"; "nothing is clamped or rounded" (the file keeps what it
// says; only the handle keeps parts per million).
#[test]
fn chaos_sections_in_every_layer_print_back_to_themselves() {
    let text = "[defaults.chaos]\nenabled = false\nseed = 0\nlatency_rate = 1e-6\nlatency = \"1h 30m\"\n\
                [configs.\"x y\".chaos]\nerror_rate = 0.1234567\nhang_rate = 0.0000014\n\
                [instances.\"api.v2\"]\nbase = \"x y\"\n[instances.\"api.v2\".chaos]\nenabled = true\nseed = 9223372036854775807\nalter_rate = 0.8765423\n\
                [instances.b.chaos]\nerror_rate = 0\nhang_rate = 1\nlatency = \"1ms\"\nlatency_rate = 0.9999996\n\
                [instances.c]\nchaos = {}\n";
    let config = parse(text);
    let error = config.configs["x y"]
        .chaos
        .as_ref()
        .unwrap()
        .error_rate
        .unwrap();
    assert!(
        (error - 0.123_456_7).abs() < 1e-15,
        "the file keeps its value: {error}"
    );
    let printed = toml::to_string(&config).unwrap();
    assert_eq!(Config::from_toml(&printed).unwrap(), config, "{printed}");
    let json = serde_json::to_string(&config).unwrap();
    let back: Config = serde_json::from_str(&json).unwrap();
    assert_eq!(back, config, "{json}");
    back.validate().unwrap();

    // The registry prints the configuration in force, after a reload too.
    let registry = on_fake(config.clone());
    assert_eq!(*registry.config(), config);
    let handle = registry.chaos("api.v2").unwrap();
    assert_eq!(handle.seed(), 9_223_372_036_854_775_807);
    assert!(close(handle.settings().error_rate, 0.123_457));
    assert!(close(handle.settings().alter_rate, 0.876_542));
    let next = parse(&text.replace("alter_rate = 0.8765423", "alter_rate = 0.5"));
    registry.reload(next.clone()).unwrap();
    let printed = toml::to_string(&*registry.config()).unwrap();
    assert_eq!(Config::from_toml(&printed).unwrap(), next);
    assert!(close(handle.settings().alter_rate, 0.5));
}

// ---------------------------------------------------------------------------------------------
// The registry's bound
// ---------------------------------------------------------------------------------------------

// Doc (RegistryBuilder::max_instances): "The most policies of each kind the registry holds ...
// Every declared instance keeps a place in each kind ...; a name the file does not declare
// gets Problem::Full when only reserved places are left"; (reload) "Problem::Full when a kind
// holds too many policies to keep a place for every instance it declares ...; nothing changes
// then".
#[test]
fn max_instances_bounds_fault_injectors_and_keeps_the_declared_places() {
    let text = "[instances.a.chaos]\nseed = 1\nerror_rate = 0.5\n[instances.b]\nbreaker = {}\n";
    let tight = Registry::builder(parse(text))
        .runtime(FakeClock::new())
        .max_instances(2)
        .build()
        .unwrap();
    assert_eq!(
        tight.chaos("x").unwrap_err().problem(),
        &Problem::Full { max: 2 }
    );
    tight.chaos("b").unwrap();
    tight.chaos("a").unwrap();
    assert_eq!(names(tight.chaos_handles()), ["a", "b"]);

    let roomy = Registry::builder(parse(text))
        .runtime(FakeClock::new())
        .max_instances(3)
        .build()
        .unwrap();
    let x = roomy.chaos("x").unwrap();
    assert_eq!(
        roomy.chaos("y").unwrap_err().problem(),
        &Problem::Full { max: 3 }
    );
    roomy.chaos("b").unwrap();
    assert_eq!(names(roomy.chaos_handles()), ["a", "b", "x"]);
    // A reload declaring a new instance with chaos finds no place: refused, nothing changes.
    let err = roomy
        .reload(parse(
            "[instances.a.chaos]\nseed = 1\nerror_rate = 0.1\n[instances.b]\nbreaker = {}\n\
             [instances.z.chaos]\nhang_rate = 0.1\n",
        ))
        .unwrap_err();
    assert_eq!(err.problem(), &Problem::Full { max: 3 }, "{err}");
    assert!(close(roomy.chaos("a").unwrap().settings().error_rate, 0.5));
    assert_eq!(names(roomy.chaos_handles()), ["a", "b", "x"]);
    // And an undeclared name already held stays usable.
    assert!(x.decide().is_none());

    let zero = Registry::builder(Config::default())
        .runtime(FakeClock::new())
        .max_instances(0)
        .build()
        .unwrap();
    assert_eq!(
        zero.chaos("any").unwrap_err().problem(),
        &Problem::Full { max: 0 }
    );
    assert!(zero.chaos_handles().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Calls through a registry's pipeline, in virtual time
// ---------------------------------------------------------------------------------------------

// Doc (Registry::chaos): "A reload applies the new switch and rates at once, for the calls that
// start after it"; (set_enabled) "a call already delayed or hanging keeps its fault"; (chaos
// module) "latency ... waits d on the runtime's clock"; "the attempt timeout and the deadline
// end hangs and long delays".
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_delayed_call_keeps_its_delay_across_a_reload_and_later_calls_take_the_new_settings() {
    let text = |enabled: bool, deadline: &str, latency: &str| {
        format!(
            "[instances.a]\ndeadline = \"{deadline}\"\n\
             [instances.a.chaos]\nseed = 1\nenabled = {enabled}\nlatency_rate = 1\nlatency = \"{latency}\"\n"
        )
    };
    let registry = Registry::new(parse(&text(true, "1s", "100ms"))).unwrap();
    let (pipeline, chaos) = (
        registry.pipeline("a").unwrap(),
        registry.chaos("a").unwrap(),
    );
    let op = || async { Ok::<u32, InjectedFault>(1) };
    let start = tokio::time::Instant::now();
    let (first, second) = tokio::join!(
        async {
            let r = pipeline.call(chaos.wrap(op)).await;
            (r, start.elapsed())
        },
        async {
            tokio::time::sleep(ms(10)).await;
            registry.reload(parse(&text(false, "1s", "100ms"))).unwrap();
            let r = pipeline.call(chaos.wrap(op)).await;
            (r, start.elapsed())
        }
    );
    assert_eq!(first, (Ok(1), ms(100)), "started before: keeps its delay");
    assert_eq!(second, (Ok(1), ms(10)), "started after: no delay");
    assert_eq!(chaos.decided(), 1);

    // The deadline ends a long delay.
    registry
        .reload(parse(&text(true, "30ms", "100ms")))
        .unwrap();
    let start = tokio::time::Instant::now();
    let r = pipeline.call(chaos.wrap(op)).await;
    assert_eq!(r, Err(Error::Rejected(Rejected::DeadlineExceeded)));
    assert_eq!(start.elapsed(), ms(30));
    // A shorter latency, for the next call.
    registry.reload(parse(&text(true, "30ms", "20ms"))).unwrap();
    let start = tokio::time::Instant::now();
    assert_eq!(pipeline.call(chaos.wrap(op)).await, Ok(1));
    assert_eq!(start.elapsed(), ms(20));
    assert_eq!(chaos.decided(), 3);
}

// Doc (Registry::chaos): "wrap it around the operation of the instance's pipeline ... every
// attempt is a call, so retries, the breaker and timeouts see its faults"; (reload) "a breaker
// keeps its state and window when the window keeps its shape"; (Chaos, When off) "no number is
// drawn".
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_configured_retry_and_breaker_see_injected_errors_and_a_switch_off_keeps_the_breaker() {
    let text = |enabled: bool| {
        format!(
            "[instances.pay]\nattempt_timeout = \"100ms\"\n\
             [instances.pay.retry]\nbackoff = \"constant\"\ninitial_delay = \"10ms\"\njitter = \"none\"\nmax_attempts = 3\n\
             [instances.pay.breaker]\nconsecutive_failures = 3\nbreak_duration = \"1s\"\n\
             [instances.pay.chaos]\nseed = 2\nenabled = {enabled}\nerror_rate = 1\n"
        )
    };
    let registry = Registry::new(parse(&text(true))).unwrap();
    let (pipeline, chaos) = (
        registry.pipeline("pay").unwrap(),
        registry.chaos("pay").unwrap(),
    );
    let runs = Arc::new(AtomicUsize::new(0));
    let op = {
        let runs = Arc::clone(&runs);
        move || {
            runs.fetch_add(1, SeqCst);
            async { Ok::<&str, InjectedFault>("paid") }
        }
    };
    let start = tokio::time::Instant::now();
    let r = pipeline.call(chaos.wrap(op.clone())).await;
    assert_eq!(r, Err(Error::Inner(InjectedFault::Error)));
    assert_eq!(start.elapsed(), ms(20), "two backoffs of 10 ms");
    assert_eq!((chaos.decided(), runs.load(SeqCst)), (3, 0));
    let breaker = registry.breaker("pay").unwrap();
    assert_eq!(breaker.state(), State::Open);

    registry.reload(parse(&text(false))).unwrap();
    assert_eq!(breaker.state(), State::Open, "the breaker keeps its state");
    assert_eq!((chaos.decided(), runs.load(SeqCst)), (3, 0));
    tokio::time::sleep(ms(1_100)).await;
    assert_eq!(pipeline.call(chaos.wrap(op)).await, Ok("paid"));
    assert_eq!(
        (chaos.decided(), runs.load(SeqCst)),
        (3, 1),
        "off: nothing drawn"
    );
}

// ---------------------------------------------------------------------------------------------
// Reloads racing calls
// ---------------------------------------------------------------------------------------------

// Doc (Chaos, private field doc, and reconfigure): "a call racing a change acts on the old
// settings or the new, never on half of either"; (Registry::chaos) "A reload applies the new
// switch and rates at once". Two states whose mixes are visible: {error 1, latency 1 × 1 ms}
// and {hang 1, no latency}; a torn read would give an error without latency, a hang with it,
// or nothing.
#[test]
fn reloads_racing_decisions_on_threads_are_seen_whole() {
    let a_text =
        "[instances.a.chaos]\nseed = 3\nerror_rate = 1\nlatency_rate = 1\nlatency = \"1ms\"\n";
    let b_text =
        "[instances.a.chaos]\nseed = 3\nhang_rate = 1\nlatency_rate = 0\nlatency = \"1ms\"\n";
    let (a_config, b_config) = (parse(a_text), parse(b_text));
    let registry = on_fake(a_config.clone());
    let chaos = registry.chaos("a").unwrap();
    let done = AtomicBool::new(false);
    let drawn = AtomicU64::new(0);
    let (mut seen_a, mut seen_b) = (0u64, 0u64);
    std::thread::scope(|s| {
        let readers: Vec<_> = (0..3)
            .map(|_| {
                let chaos = chaos.clone();
                let (done, drawn) = (&done, &drawn);
                s.spawn(move || {
                    let (mut a, mut b) = (0u64, 0u64);
                    let mut rounds = 0u64;
                    while !done.load(SeqCst) || rounds < 2_000 {
                        rounds += 1;
                        let i = chaos.decide();
                        drawn.fetch_add(1, SeqCst);
                        match (i.fault, i.latency) {
                            (Some(Fault::Error), Some(d)) if d == ms(1) => a += 1,
                            (Some(Fault::Hang), None) => b += 1,
                            other => panic!("a torn decision: {other:?}"),
                        }
                        let st = chaos.settings();
                        let is_a = close(st.error_rate, 1.0)
                            && close(st.hang_rate, 0.0)
                            && close(st.latency_rate, 1.0);
                        let is_b = close(st.error_rate, 0.0)
                            && close(st.hang_rate, 1.0)
                            && close(st.latency_rate, 0.0);
                        assert!(is_a || is_b, "torn settings: {st:?}");
                    }
                    (a, b)
                })
            })
            .collect();
        for n in 0..1_000u32 {
            let config = if n.is_multiple_of(2) {
                &b_config
            } else {
                &a_config
            };
            registry.reload(config.clone()).unwrap();
        }
        done.store(true, SeqCst);
        for r in readers {
            let (a, b) = r.join().unwrap();
            seen_a += a;
            seen_b += b;
        }
    });
    assert_eq!(
        chaos.decided(),
        drawn.load(SeqCst),
        "every call drew one number"
    );
    assert_eq!(seen_a + seen_b, drawn.load(SeqCst));
    assert_eq!(chaos.seed(), 3);
}

// Doc (LivePipeline): "a call started before it finishes on the settings it started with, every
// call after it runs on the new ones"; (Registry::chaos) "A reload applies the new switch and
// rates at once, for the calls that start after it"; (Call) "error ... the operation never
// called; hang ... the operation never called". On a multi-thread runtime, each call's outcome
// is {error 1}'s or {hang 1}'s (ended by the attempt timeout), never a mix (which would run the
// operation and succeed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_racing_pipeline_calls_on_a_multi_thread_runtime_give_one_outcome_or_the_other() {
    let text = |fault: &str| {
        format!(
            "[instances.a]\nattempt_timeout = \"2ms\"\n[instances.a.chaos]\nseed = 4\n{fault}_rate = 1\n"
        )
    };
    let (error_config, hang_config) = (parse(&text("error")), parse(&text("hang")));
    let registry = Arc::new(Registry::new(error_config.clone()).unwrap());
    let runs = Arc::new(AtomicUsize::new(0));
    {
        // Each setting alone gives its outcome.
        let (pipeline, chaos) = (
            registry.pipeline("a").unwrap(),
            registry.chaos("a").unwrap(),
        );
        let op = || async { Ok::<u32, InjectedFault>(7) };
        let r = pipeline.call(chaos.wrap(op)).await;
        assert_eq!(r, Err(Error::Inner(InjectedFault::Error)));
        registry.reload(hang_config.clone()).unwrap();
        assert_eq!(pipeline.call(chaos.wrap(op)).await, Err(Error::TimedOut));
        registry.reload(error_config.clone()).unwrap();
        assert_eq!(chaos.decided(), 2);
    }
    let done = Arc::new(AtomicBool::new(false));

    let reloader = {
        let (registry, done) = (Arc::clone(&registry), Arc::clone(&done));
        let (error_config, hang_config) = (error_config.clone(), hang_config.clone());
        std::thread::spawn(move || {
            let mut n = 0u32;
            while !done.load(SeqCst) || n < 50 {
                let config = if n.is_multiple_of(2) {
                    &hang_config
                } else {
                    &error_config
                };
                registry.reload(config.clone()).unwrap();
                n += 1;
                std::thread::yield_now();
            }
            n
        })
    };
    let callers: Vec<_> = (0..4)
        .map(|_| {
            let registry = Arc::clone(&registry);
            let runs = Arc::clone(&runs);
            tokio::spawn(async move {
                let pipeline = registry.pipeline("a").unwrap();
                let chaos = registry.chaos("a").unwrap();
                let (mut errors, mut hangs) = (0u32, 0u32);
                for _ in 0..60 {
                    let runs = Arc::clone(&runs);
                    let op = move || {
                        runs.fetch_add(1, SeqCst);
                        async { Ok::<u32, InjectedFault>(7) }
                    };
                    match pipeline.call(chaos.wrap(op)).await {
                        Err(Error::Inner(InjectedFault::Error)) => errors += 1,
                        Err(Error::TimedOut) => hangs += 1,
                        other => panic!("a mix of the two settings: {other:?}"),
                    }
                }
                (errors, hangs)
            })
        })
        .collect();
    let mut total = 0u32;
    for c in callers {
        let (errors, hangs) = c.await.unwrap();
        total += errors + hangs;
    }
    done.store(true, SeqCst);
    let reloads = reloader.join().unwrap();
    assert!(reloads >= 50);
    assert_eq!(total, 240);
    assert_eq!(runs.load(SeqCst), 0, "neither setting runs the operation");
    let chaos = registry.chaos("a").unwrap();
    assert_eq!(chaos.decided(), 242);
    assert_eq!(chaos.seed(), 4);
}

// ---------------------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------------------

// Doc (chaos module): "With the metrics feature, each injection counts in
// tidewall_chaos_injections_total"; (Chaos::name) "The name its metrics and events carry";
// (Instance) "Builds a policy only to check its settings. Without a recorder of its own it would
// register its metric series (named after the layer checked, `defaults` say) with the
// process's recorder, where a dashboard would list policies that do not exist."; (When off)
// "nothing is counted".
#[cfg(feature = "metrics")]
#[test]
fn injections_count_under_the_instance_name_and_checking_counts_nothing() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let text = "[defaults.chaos]\nseed = 8\nerror_rate = 1\n\
                [configs.x.chaos]\nhang_rate = 0.5\nerror_rate = 0.5\n\
                [instances.a.chaos]\n\
                [instances.b.chaos]\nenabled = false\n";
    metrics::with_local_recorder(&recorder, || {
        let config = parse(text);
        config.validate().unwrap();
        let registry = on_fake(config);
        let (a, b, other) = (
            registry.chaos("a").unwrap(),
            registry.chaos("b").unwrap(),
            registry.chaos("other").unwrap(),
        );
        for _ in 0..5 {
            assert_eq!(a.decide().fault, Some(Fault::Error));
        }
        for _ in 0..2 {
            assert_eq!(other.decide().fault, Some(Fault::Error));
        }
        // Latency and hang, each counted under its own label.
        registry
            .reload(parse(
                "[defaults.chaos]\nseed = 8\nerror_rate = 1\n\
                 [configs.x.chaos]\nhang_rate = 0.5\nerror_rate = 0.5\n\
                 [instances.a.chaos]\nerror_rate = 0\nhang_rate = 1\nlatency_rate = 1\nlatency = \"1ms\"\n\
                 [instances.b.chaos]\nenabled = false\n",
            ))
            .unwrap();
        for _ in 0..4 {
            assert_eq!(a.decide().fault, Some(Fault::Hang));
        }
        for _ in 0..3 {
            assert!(b.decide().is_none());
        }
    });
    type Series = Vec<(String, Vec<(String, String)>, u64)>;
    let series: Series = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, _, _, _)| key.key().name().starts_with("tidewall_chaos"))
        .map(|(key, _, _, value)| {
            let labels = key
                .key()
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            let count = match value {
                DebugValue::Counter(c) => c,
                other => panic!("a counter expected: {other:?}"),
            };
            (key.key().name().to_owned(), labels, count)
        })
        .collect();
    let total = |name: &str, fault: &str| -> u64 {
        series
            .iter()
            .filter(|(metric, labels, _)| {
                metric == "tidewall_chaos_injections_total"
                    && labels.iter().any(|(k, v)| k == "name" && v == name)
                    && labels.iter().any(|(k, v)| k == "fault" && v == fault)
            })
            .map(|(_, _, c)| *c)
            .sum()
    };
    assert_eq!(total("a", "error"), 5, "{series:?}");
    assert_eq!(total("a", "hang"), 4, "{series:?}");
    assert_eq!(total("a", "latency"), 4, "{series:?}");
    assert_eq!(total("other", "error"), 2, "{series:?}");
    assert_eq!(total("b", "error"), 0, "{series:?}");
    for (metric, labels, _) in &series {
        assert!(
            !labels.iter().any(
                |(k, v)| k == "name" && (v.starts_with("defaults") || v.starts_with("configs"))
            ),
            "a checking build registered {metric} {labels:?}"
        );
    }
}

// Doc (decide_nth): "Injection::NONE while the handle is disabled"; (When off) "no number is drawn".
#[test]
fn a_disabled_configured_handle_decides_none_for_every_number() {
    let registry = on_fake(parse(
        "[instances.a.chaos]\nseed = 12\nenabled = false\nerror_rate = 1\nlatency_rate = 1\nlatency = \"1ms\"\n",
    ));
    let chaos = registry.chaos("a").unwrap();
    // Doc (decide_nth): "Injection::NONE while the handle is disabled."
    assert!((0..100).all(|n| chaos.decide_nth(n) == Injection::NONE));
    assert_eq!(chaos.decide(), Injection::NONE);
    assert_eq!(chaos.decided(), 0);
}

// ---------------------------------------------------------------------------------------------
// More reloads: what the registry holds decides what a reload must be able to build
// ---------------------------------------------------------------------------------------------

// Doc (reload): "an invalid configuration (or one under which a policy the registry holds
// could not be built, such as a bulkhead whose `max_concurrent` was only in a section now
// removed) is refused with its error, and the old one stays in force, whole". Defaults whose
// rates sum past 1 pass validation (an instance may settle them), but a handle the registry
// holds on the defaults alone (an undeclared name, or a declared instance whose section is
// gone) could not be built from them.
#[test]
fn a_reload_that_leaves_a_held_handle_on_defaults_that_sum_past_one_is_refused() {
    let registry = on_fake(parse(
        "[defaults.chaos]\nseed = 1\nerror_rate = 0.5\n[instances.a.chaos]\nhang_rate = 0.5\n",
    ));
    let a = registry.chaos("a").unwrap();
    // Valid for the declared instance, and no handle on the defaults alone yet.
    let contradicting = "[defaults.chaos]\nerror_rate = 0.6\nhang_rate = 0.6\n\
                         [instances.a.chaos]\nhang_rate = 0.4\n";
    parse(contradicting).validate().unwrap();
    registry.reload(parse(contradicting)).unwrap();
    assert!(close(a.settings().hang_rate, 0.4) && close(a.settings().error_rate, 0.6));
    registry
        .reload(parse(
            "[defaults.chaos]\nerror_rate = 0.5\n[instances.a.chaos]\nhang_rate = 0.5\n",
        ))
        .unwrap();

    // Now a handle on the defaults alone is held: the same file cannot be applied to it.
    let x = registry.chaos("x").unwrap();
    let before = registry.config();
    let err = registry.reload(parse(contradicting)).unwrap_err();
    assert!(
        is_rule(&err, |r| matches!(r, ConfigError::Conflict { .. })),
        "{err:?}"
    );
    assert!(err.path().starts_with("defaults.chaos"), "{err}");
    assert_eq!(
        registry.config(),
        before,
        "the old configuration stays in force"
    );
    assert!(
        close(a.settings().hang_rate, 0.5),
        "nothing applied: {:?}",
        a.settings()
    );
    assert!(
        close(x.settings().error_rate, 0.5),
        "nothing applied: {:?}",
        x.settings()
    );

    // A declared instance whose own section is removed falls back to the defaults too.
    let registry = on_fake(parse(
        "[defaults.chaos]\nerror_rate = 0.6\nhang_rate = 0.6\n\
         [instances.a.chaos]\nhang_rate = 0.4\n[instances.a.bulkhead]\nmax_concurrent = 1\n",
    ));
    let a = registry.chaos("a").unwrap();
    let err = registry
        .reload(parse(
            "[defaults.chaos]\nerror_rate = 0.6\nhang_rate = 0.6\n\
             [instances.a.bulkhead]\nmax_concurrent = 2\n",
        ))
        .unwrap_err();
    assert!(
        is_rule(&err, |r| matches!(r, ConfigError::Conflict { .. })),
        "{err:?}"
    );
    assert!(close(a.settings().hang_rate, 0.4));
    assert_eq!(
        registry.bulkhead("a").unwrap().capacity(),
        1,
        "refused whole"
    );
}

// Doc (reload): "those of instances it no longer declares are kept, on the layers that remain";
// (Reload::built) "Policies of instances the new configuration declares that the registry did
// not hold"; (Reload::retuned) "Policies that took their new settings in place"; and a refused
// reload builds nothing ("nothing changes then").
#[test]
fn a_reload_builds_newly_declared_handles_retunes_held_ones_and_a_refusal_builds_nothing() {
    let registry = on_fake(parse("[instances.a.chaos]\nseed = 1\nerror_rate = 0.5\n"));
    let a = registry.chaos("a").unwrap();
    let x = registry.chaos("x").unwrap();
    // A declared instance whose chaos section is removed keeps its handle, on the defaults.
    let reload = registry
        .reload(parse(
            "[defaults.chaos]\nalter_rate = 0.25\n[instances.a]\nbreaker = {}\n",
        ))
        .unwrap();
    let s = a.settings();
    assert!(
        same_settings(&s, (true, [0.0, 0.0, 0.0, 0.25], Duration::ZERO)),
        "{s:?}"
    );
    assert!(close(x.settings().alter_rate, 0.25));
    assert_eq!(a.seed(), 1);
    assert!(
        reload.retuned >= 2,
        "both held handles took new settings: {reload:?}"
    );

    // Refused (a bad value elsewhere): the new instance's handle is not built.
    let err = registry
        .reload(parse(
            "[instances.a]\nbreaker = {}\n[instances.z.chaos]\nhang_rate = 0.5\n[instances.z.bulkhead]\nmax_concurrent = 1\nmax_queue = 0\n",
        ).clone_with_bad_bulkhead())
        .unwrap_err();
    assert_eq!(err.path(), "instances.z.bulkhead.max_concurrent", "{err}");
    assert_eq!(names(registry.chaos_handles()), ["a", "x"]);

    let reload = registry
        .reload(parse(
            "[instances.a]\nbreaker = {}\n[instances.z.chaos]\nhang_rate = 0.5\n",
        ))
        .unwrap();
    assert!(reload.built >= 1, "{reload:?}");
    assert_eq!(names(registry.chaos_handles()), ["a", "x", "z"]);
    assert!(close(
        registry.chaos("z").unwrap().settings().hang_rate,
        0.5
    ));
    // The defaults' alter rate is gone: a and x follow.
    assert!(a.decide().is_none() && x.decide().is_none());
}

/// A configuration with instance `z`'s bulkhead made invalid (zero slots), without validation.
trait BadBulkhead {
    fn clone_with_bad_bulkhead(&self) -> Config;
}

impl BadBulkhead for Config {
    fn clone_with_bad_bulkhead(&self) -> Config {
        let mut c = self.clone();
        c.instances
            .get_mut("z")
            .and_then(|p| p.bulkhead.as_mut())
            .expect("z has a bulkhead")
            .max_concurrent = Some(0);
        c
    }
}

// Doc (config module): "a configuration is exactly as strict as the builders" — a switched-off
// section's rates are checked all the same.
#[test]
fn a_switched_off_section_is_checked_all_the_same() {
    for (text, path) in [
        (
            "[instances.a.chaos]\nenabled = false\nerror_rate = 2\n",
            "instances.a.chaos.error_rate",
        ),
        (
            "[defaults.chaos]\nenabled = false\nhang_rate = nan\n",
            "defaults.chaos.hang_rate",
        ),
        (
            "[instances.a.chaos]\nenabled = false\nlatency_rate = 0.5\n",
            "instances.a.chaos.latency",
        ),
        (
            "[instances.a.chaos]\nenabled = false\nerror_rate = 0.5\nalter_rate = 0.6\n",
            "instances.a.chaos",
        ),
    ] {
        let err = refused(text);
        assert_eq!(err.path(), path, "{text}\n{err}");
    }
}

// Doc (Chaos::seed): "log it to replay a run"; (ChaosConfig) "The seed its draws start from" — a
// seed anywhere in u64, written in the file, replays (and is held fixed) as given.
#[test]
fn seeds_across_the_whole_u64_range_are_read_held_and_replayed() {
    for seed in [
        0,
        1,
        9_223_372_036_854_775_807,
        9_223_372_036_854_775_808,
        u64::MAX,
    ] {
        let text = format!("[instances.a.chaos]\nseed = {seed}\nerror_rate = 0.5\n");
        let registry = on_fake(parse(&text));
        let chaos = registry.chaos("a").unwrap();
        assert_eq!(chaos.seed(), seed);
        let coded = Chaos::builder().seed(seed).error(0.5).build().unwrap();
        assert!(
            (0..200).all(|n| chaos.decide_nth(n) == coded.decide_nth(n)),
            "seed {seed}"
        );
        registry.reload(parse(&text)).unwrap();
        let other = format!("[instances.a.chaos]\nseed = {}\n", seed.wrapping_add(1));
        let err = registry.reload(parse(&other)).unwrap_err();
        assert!(
            matches!(err.problem(), Problem::Fixed),
            "seed {seed}: {err:?}"
        );
        let printed = toml::to_string(&*registry.config()).unwrap();
        assert_eq!(
            Config::from_toml(&printed).unwrap(),
            parse(&text),
            "seed {seed}"
        );
    }
}

// Doc (Registry): "Asking for a policy of a name the file does not declare ... builds it from
// the layers there are ... on first use"; (reload) "Handles got before the reload are the same
// policies: they see the new settings". A handle made on first use while a reload runs ends up
// on the new settings whichever goes first; and its seed is either held before the reload
// (which is then refused) or taken from the new file.
#[test]
fn first_use_racing_a_reload_never_leaves_a_handle_on_the_old_settings_or_seed() {
    let old = parse("[defaults.chaos]\nseed = 1\nerror_rate = 0.1\n");
    let new_rates = parse("[defaults.chaos]\nseed = 1\nerror_rate = 0.2\n");
    let new_seed = parse("[defaults.chaos]\nseed = 2\nerror_rate = 0.3\n");
    let mut rng = SplitMix64::new(0xF1_257);
    for round in 0..150 {
        let registry = on_fake(old.clone());
        let spin = rng.below_or_equal(200);
        let (handle, reloaded) = std::thread::scope(|s| {
            let getter = s.spawn(|| {
                for _ in 0..spin {
                    std::hint::spin_loop();
                }
                registry.chaos("x").unwrap()
            });
            let reloaded = registry.reload(new_rates.clone());
            (getter.join().unwrap(), reloaded)
        });
        reloaded.unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert!(
            close(handle.settings().error_rate, 0.2),
            "round {round}: a handle left on the old settings: {:?}",
            handle.settings()
        );

        let registry = on_fake(old.clone());
        let (handle, reloaded) = std::thread::scope(|s| {
            let getter = s.spawn(|| {
                for _ in 0..spin {
                    std::hint::spin_loop();
                }
                registry.chaos("x").unwrap()
            });
            let reloaded = registry.reload(new_seed.clone());
            (getter.join().unwrap(), reloaded)
        });
        match reloaded {
            Ok(_) => {
                assert_eq!(handle.seed(), 2, "round {round}");
                assert!(close(handle.settings().error_rate, 0.3), "round {round}");
            }
            Err(e) => {
                assert!(
                    matches!(e.problem(), Problem::Fixed),
                    "round {round}: {e:?}"
                );
                assert_eq!(handle.seed(), 1, "round {round}");
                assert!(close(handle.settings().error_rate, 0.1), "round {round}");
            }
        }
    }
}

// Doc (set_enabled, which a reload's switch is): "for the calls that start after this returns (a
// call already delayed or hanging keeps its fault)"; (Registry::chaos) "A reload applies the new
// switch and rates at once, for the calls that start after it"; (module) "the attempt timeout
// ... end[s] hangs".
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_hanging_call_keeps_hanging_across_a_reload_that_switches_chaos_off() {
    let text = |enabled: bool| {
        format!(
            "[instances.a]\nattempt_timeout = \"100ms\"\n[instances.a.chaos]\nseed = 6\nenabled = {enabled}\nhang_rate = 1\n"
        )
    };
    let registry = Registry::new(parse(&text(true))).unwrap();
    let (pipeline, chaos) = (
        registry.pipeline("a").unwrap(),
        registry.chaos("a").unwrap(),
    );
    let op = || async { Ok::<u32, InjectedFault>(1) };
    let start = tokio::time::Instant::now();
    let (first, second) = tokio::join!(
        async { (pipeline.call(chaos.wrap(op)).await, start.elapsed()) },
        async {
            tokio::time::sleep(ms(10)).await;
            registry.reload(parse(&text(false))).unwrap();
            (pipeline.call(chaos.wrap(op)).await, start.elapsed())
        }
    );
    assert_eq!(first, (Err(Error::TimedOut), ms(100)));
    assert_eq!(second, (Ok(1), ms(10)));
    assert_eq!(chaos.decided(), 1);
}

// Doc (Registry::chaos): "every attempt is a call" and "A reload applies the new switch and
// rates at once, for the calls that start after it"; (LivePipeline) "a call started before it
// finishes on the settings it started with" — the pipeline's own settings; the handle's are
// read by each attempt. A retrying call whose first attempt was altered after a delay has its
// next attempt, started after a reload switching chaos off, run clean.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn the_attempts_of_one_call_after_a_reload_take_the_new_switch() {
    let text = |enabled: bool| {
        format!(
            "[instances.a.retry]\nbackoff = \"constant\"\ninitial_delay = \"10ms\"\njitter = \"none\"\nmax_attempts = 3\n\
             [instances.a.chaos]\nseed = 6\nenabled = {enabled}\nalter_rate = 1\nlatency_rate = 1\nlatency = \"50ms\"\n"
        )
    };
    let registry = Registry::new(parse(&text(true))).unwrap();
    let (pipeline, chaos) = (
        registry.pipeline("a").unwrap(),
        registry.chaos("a").unwrap(),
    );
    let runs = Arc::new(AtomicUsize::new(0));
    let op = {
        let runs = Arc::clone(&runs);
        move || {
            runs.fetch_add(1, SeqCst);
            async { Ok::<u32, InjectedFault>(1) }
        }
    };
    let start = tokio::time::Instant::now();
    let (result, ()) = tokio::join!(
        async { (pipeline.call(chaos.wrap(op)).await, start.elapsed()) },
        async {
            tokio::time::sleep(ms(20)).await;
            registry.reload(parse(&text(false))).unwrap();
        }
    );
    assert_eq!(
        result,
        (Ok(1), ms(60)),
        "altered at 50 ms, retried at 60 ms without chaos"
    );
    assert_eq!((chaos.decided(), runs.load(SeqCst)), (1, 2));
}
