//! Configuration: layers, key paths of errors, formats, and the registry's handles.
#![cfg(feature = "toml")]

use std::time::Duration;

use tidewall::breaker::{State, Window};
use tidewall::config::{
    BreakerConfig, BulkheadConfig, Config, Invalid, Policies, Problem, Registry, Toggle,
};
use tidewall::{ConfigError, Rejected};

fn names<T>(list: Vec<(tidewall::Name, T)>) -> Vec<String> {
    list.into_iter().map(|(name, _)| name.to_string()).collect()
}

fn invalid(text: &str) -> Invalid {
    Config::from_toml(text).expect_err("the configuration must be refused")
}

#[test]
fn each_key_comes_from_the_topmost_layer_that_sets_it() {
    let config = Config::from_toml(
        r#"
        [defaults.breaker]
        failure_rate = 0.5
        minimum_calls = 20
        window = "30s"
        half_open_probes = 2

        [configs.critical.breaker]
        failure_rate = 0.25
        minimum_calls = 5

        [instances.payments]
        base = "critical"
        [instances.payments.breaker]
        minimum_calls = 7
        "#,
    )
    .unwrap();
    let breaker = config
        .instance("payments")
        .unwrap()
        .breaker()
        .unwrap()
        .build()
        .unwrap();
    let policy = breaker.policy();
    assert_eq!(policy.half_open_probes(), 2, "from the defaults");
    assert_eq!(
        policy.window(),
        Window::Time {
            span: Duration::from_secs(30),
            buckets: 10
        },
        "from the defaults, with the default bucket count"
    );
    // failure_rate from the base, minimum_calls from the instance. `calls` calls, the last
    // `failures` of them failing: whether the breaker opened.
    let opened = |calls: u32, failures: u32| {
        let b = config
            .instance("payments")
            .unwrap()
            .breaker()
            .unwrap()
            .build()
            .unwrap();
        for i in 0..calls {
            let Ok(permit) = b.try_acquire() else {
                return true;
            };
            if i >= calls - failures {
                permit.failure();
            } else {
                permit.success();
            }
        }
        b.state() == State::Open
    };
    assert!(
        !opened(6, 6),
        "minimum_calls is the instance's 7, not the base's 5"
    );
    assert!(opened(8, 2), "failure_rate is the base's 0.25 (2 of 8)");
    assert!(!opened(8, 1), "1 of 8 is under the base's 0.25");
}

#[test]
fn a_name_the_file_does_not_declare_gets_the_defaults() {
    let config = Config::from_toml(
        r#"
        [defaults.bulkhead]
        max_concurrent = 3
        [instances.orders.bulkhead]
        max_concurrent = 9
        "#,
    )
    .unwrap();
    let other = config
        .instance("unknown")
        .unwrap()
        .bulkhead()
        .unwrap()
        .build()
        .unwrap();
    assert_eq!((other.name(), other.capacity()), ("unknown", 3));
}

#[test]
fn a_window_is_taken_whole_from_the_topmost_layer_that_gives_one() {
    // The defaults' time window does not clash with the instance's count window.
    let config = Config::from_toml(
        r#"
        [defaults.breaker]
        window = "30s"
        window_buckets = 5
        [instances.a.breaker]
        window_calls = 50
        minimum_calls = 10
        [instances.b.breaker]
        window = "10s"
        "#,
    )
    .unwrap();
    let window = |name| {
        config
            .instance(name)
            .unwrap()
            .breaker()
            .unwrap()
            .build()
            .unwrap()
            .policy()
            .window()
    };
    assert_eq!(window("a"), Window::Count { calls: 50 });
    assert_eq!(
        window("b"),
        Window::Time {
            span: Duration::from_secs(10),
            buckets: 5
        },
        "buckets may come from a lower layer"
    );
    let err = invalid("[instances.a.breaker]\nwindow = \"1s\"\nwindow_calls = 10\n");
    assert_eq!(err.path(), "instances.a.breaker.window");
    assert!(matches!(err.problem(), Problem::NotHere(_)), "{err}");
}

#[test]
fn an_error_names_the_layer_and_key_the_bad_value_came_from() {
    let cases = [
        (
            "[instances.payments.breaker]\nfailure_rate = 1.5\n",
            "instances.payments.breaker.failure_rate: must be in [0.000001, 1] (kept in parts per million), got 1.5",
        ),
        (
            "[configs.critical.breaker]\nfailure_rate = 0.0\n[instances.payments]\nbase = \"critical\"\nbreaker = {}\n",
            "configs.critical.breaker.failure_rate: must be in [0.000001, 1] (kept in parts per million), got 0",
        ),
        (
            "[defaults.retry]\nmax_attempts = 0\n",
            "defaults.retry.max_attempts: must be greater than zero",
        ),
        (
            "[instances.x.retry]\ninitial_delay = \"0s\"\nbackoff = \"constant\"\nmax_delay = \"1s\"\n[instances.y.retry]\ninitial_delay = \"5s\"\nmax_delay = \"1s\"\n",
            "instances.y.retry: the first delay exceeds max_delay",
        ),
        (
            "[instances.orders.bulkhead]\nmax_queue = 4\n",
            "instances.orders.bulkhead.max_concurrent: must be set (it has no default)",
        ),
        (
            "[instances.search.rate_limit]\ncount = 10\n",
            "instances.search.rate_limit.period: must be set (it has no default)",
        ),
        (
            "[instances.search.rate_limit]\ncount = 0\nperiod = \"1s\"\n",
            "instances.search.rate_limit.count: must be greater than zero",
        ),
        (
            "[instances.a.breaker]\nwindow = \"1s\"\nwindow_buckets = 0\n",
            "instances.a.breaker.window_buckets: must be greater than zero",
        ),
        (
            "[instances.a]\nbase = \"missing\"\n",
            "instances.a.base: no config named \"missing\" in `configs`",
        ),
        (
            "[instances.\"api.v2\".bulkhead]\nmax_concurrent = 0\n",
            "instances.\"api.v2\".bulkhead.max_concurrent: must be greater than zero",
        ),
        (
            "[instances.a.retry]\nbackoff = \"constant\"\nfactor = 3.0\n",
            "instances.a.retry.factor: `factor` is for `backoff = \"exponential\"`",
        ),
        (
            "[defaults.retry]\nbackoff = \"exponential\"\nstep = \"1s\"\n",
            "defaults.retry.step: `step` is for `backoff = \"linear\"`",
        ),
        (
            "[instances.a.breaker]\nwindow_calls = 10\nwindow_buckets = 4\n",
            "instances.a.breaker.window_buckets: buckets are for a time window (`window`), not `window_calls`",
        ),
        (
            "[defaults]\nbase = \"x\"\n",
            "defaults.base: only an instance has a base",
        ),
        (
            "[instances.a.budget]\nratio = -1.0\n",
            "instances.a.budget.ratio: must be 0, or in [0.000001, 1000] (kept in parts per million), got -1",
        ),
    ];
    for (text, message) in cases {
        let err = invalid(text);
        assert_eq!(err.to_string(), message, "for:\n{text}");
    }
}

#[test]
fn a_rule_error_keeps_the_builders_error() {
    let err = invalid("[instances.a.bulkhead]\nmax_concurrent = 0\n");
    assert_eq!(
        err.problem(),
        &Problem::Rule(ConfigError::Zero {
            field: "max_concurrent"
        })
    );
    let source = std::error::Error::source(&err).expect("the builder's error");
    assert_eq!(
        source.to_string(),
        "`max_concurrent` must be greater than zero"
    );
}

#[test]
fn defaults_and_configs_may_leave_out_what_an_instance_sets() {
    let config = Config::from_toml(
        r#"
        [defaults.bulkhead]
        max_wait = "100ms"
        [configs.small.bulkhead]
        max_queue = 0
        [instances.a]
        base = "small"
        [instances.a.bulkhead]
        max_concurrent = 2
        [instances.b.breaker]
        consecutive_failures = 3
        "#,
    );
    let config = config.expect("b has no bulkhead of its own, so it needs no max_concurrent");
    let registry = Registry::new(config).unwrap();
    assert_eq!(registry.bulkhead("a").unwrap().capacity(), 2);
    let err = registry.bulkhead("b").unwrap_err();
    assert_eq!(err.path(), "defaults.bulkhead.max_concurrent");
    assert_eq!(err.problem(), &Problem::Missing);
}

#[test]
fn syntax_errors_say_where() {
    for (text, needle) in [
        (
            "[instances.a.breaker]\nfailur_rate = 0.5\n",
            "unknown field `failur_rate`",
        ),
        (
            "[instances.a.breaker]\nbreak_duration = \"5\"\n",
            "a number without a unit",
        ),
        (
            "[instances.a.breaker]\nbreak_duration = 5\n",
            "a duration such as",
        ),
        ("[instances.a.bulkhead]\nmax_concurrent = -1\n", "-1"),
        ("[instances.a]\ndeadline = \"of\"\n", "not a duration"),
        (
            "[instances.a.retry]\nbackoff = \"fibonacci\"\n",
            "fibonacci",
        ),
        ("[instancez.a]\n", "unknown field `instancez`"),
        ("[instances.a.breaker\n", "line 1"),
    ] {
        let err = invalid(text);
        assert!(matches!(err.problem(), Problem::Syntax(_)), "{err}");
        assert!(err.to_string().contains(needle), "{needle:?} not in: {err}");
    }
}

#[test]
fn off_turns_a_setting_off() {
    let config = Config::from_toml(
        r#"
        [instances.a]
        deadline = "off"
        attempt_timeout = "250ms"
        [instances.a.breaker]
        failure_rate = "off"
        consecutive_failures = 2
        max_half_open_wait = "off"
        [instances.a.bulkhead]
        max_concurrent = 1
        max_wait = "off"
        "#,
    )
    .unwrap();
    let a = config.instance("a").unwrap();
    assert_eq!(a.deadline(), None);
    assert_eq!(a.attempt_timeout(), Some(Duration::from_millis(250)));
    let breaker = a.breaker().unwrap().build().unwrap();
    assert_eq!(breaker.policy().max_half_open_wait(), None);
    let err = invalid("[instances.a.breaker]\nfailure_rate = \"no\"\n");
    assert!(err.to_string().contains("a number, or \"off\""), "{err}");
}

#[test]
fn json_works_through_serde_and_a_config_prints_back_to_itself() {
    let json = r#"{
        "defaults": { "retry": { "max_attempts": 3, "initial_delay": "50ms" } },
        "instances": { "a": { "deadline": "2s", "breaker": { "failure_rate": "off", "consecutive_failures": 4 } } }
    }"#;
    let config: Config = serde_json::from_str(json).unwrap();
    config.validate().unwrap();
    assert_eq!(
        config
            .instance("a")
            .unwrap()
            .backoff()
            .unwrap()
            .max_attempts_total(),
        3
    );

    let printed = toml::to_string(&config).unwrap();
    assert_eq!(
        Config::from_toml(&printed).unwrap(),
        config,
        "printed:\n{printed}"
    );
    let as_json = serde_json::to_string(&config).unwrap();
    assert_eq!(serde_json::from_str::<Config>(&as_json).unwrap(), config);
}

#[test]
fn configs_built_in_code_are_checked_the_same_way() {
    let mut breaker = BreakerConfig::default();
    breaker.failure_rate = Some(Toggle::On(f64::NAN));
    let mut payments = Policies::default();
    payments.breaker = Some(breaker);
    let mut config = Config::default();
    config.instances.insert("payments".into(), payments);
    let err = config.validate().unwrap_err();
    assert_eq!(
        err.to_string(),
        "instances.payments.breaker.failure_rate: must be a finite number"
    );
    assert!(
        Registry::new(config).is_err(),
        "a registry is never built from it"
    );
}

/// A `max_retry_after` past `u64::MAX` nanoseconds, set in code, is refused as the HTTP
/// client's builder refuses it: printed, it would not parse back (audit s35).
#[test]
fn a_max_retry_after_past_u64_nanoseconds_is_refused() {
    let mut retry = tidewall::config::RetryConfig::default();
    retry.max_retry_after = Some(Duration::MAX);
    let mut orders = Policies::default();
    orders.retry = Some(retry);
    let mut config = Config::default();
    config.instances.insert("orders".into(), orders);
    let err = config.validate().unwrap_err();
    assert_eq!(err.path(), "instances.orders.retry.max_retry_after");
    assert!(
        matches!(
            err.problem(),
            Problem::Rule(ConfigError::DurationOverflow {
                field: "max_retry_after"
            })
        ),
        "{err}"
    );
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn the_registry_hands_out_one_shared_policy_per_name() {
    let config = Config::from_toml(
        r#"
        [defaults.breaker]
        failure_rate = "off"
        consecutive_failures = 2
        break_duration = "10s"
        [instances.payments]
        breaker = {}
        [instances.payments.bulkhead]
        max_concurrent = 1
        max_queue = 0
        "#,
    )
    .unwrap();
    let registry = Registry::new(config).unwrap();
    assert_eq!(
        names(registry.breakers()),
        ["payments"],
        "declared policies exist from the start"
    );
    assert_eq!(names(registry.bulkheads()), ["payments"]);
    assert!(registry.rate_limiters().is_empty());

    let one = registry.breaker("payments").unwrap();
    let two = registry.breaker("payments").unwrap();
    one.try_acquire().unwrap().failure();
    one.try_acquire().unwrap().failure();
    assert_eq!(two.state(), State::Open, "one breaker, two handles");
    assert!(matches!(
        two.try_acquire(),
        Err(Rejected::CircuitOpen { .. })
    ));
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(
        two.try_acquire().is_ok(),
        "the configured break, on the runtime's clock"
    );

    let held = registry
        .bulkhead("payments")
        .unwrap()
        .try_acquire_owned()
        .unwrap();
    assert!(
        registry
            .bulkhead("payments")
            .unwrap()
            .try_acquire()
            .is_err(),
        "one slot, shared"
    );
    drop(held);

    // Get-or-create: another name gets the defaults, once.
    let search = registry.breaker("search").unwrap();
    assert_eq!(search.name(), "search");
    assert_eq!(
        names(registry.breakers()),
        ["payments", "search"],
        "listed by name"
    );
}

#[test]
fn the_registry_is_bounded() {
    let config = Config::from_toml("[defaults.breaker]\nconsecutive_failures = 1\n").unwrap();
    let registry = Registry::builder(config).max_instances(2).build().unwrap();
    registry.breaker("a").unwrap();
    registry.breaker("b").unwrap();
    registry.breaker("a").unwrap();
    let err = registry.breaker("c").unwrap_err();
    assert_eq!(err.problem(), &Problem::Full { max: 2 });
    assert_eq!(registry.breakers().len(), 2);
    // Each kind is bounded on its own.
    assert!(
        Registry::builder(Config::default())
            .max_instances(0)
            .build()
            .unwrap()
            .retry_budget("a")
            .is_err()
    );

    let mut many = Config::default();
    for i in 0..3 {
        many.instances.insert(format!("i{i}"), Policies::default());
    }
    let err = Registry::builder(many)
        .max_instances(2)
        .build()
        .unwrap_err();
    assert_eq!(err.problem(), &Problem::Full { max: 2 });
}

#[test]
fn an_instance_has_the_sections_of_its_base() {
    let config = Config::from_toml(
        r#"
        [configs.guarded.bulkhead]
        max_concurrent = 4
        [instances.a]
        base = "guarded"
        "#,
    )
    .unwrap();
    let registry = Registry::new(config).unwrap();
    let listed: Vec<_> = registry
        .bulkheads()
        .into_iter()
        .map(|(n, b)| (n.to_string(), b.capacity()))
        .collect();
    assert_eq!(listed, [("a".to_owned(), 4)]);
    assert!(
        registry.breakers().is_empty(),
        "no breaker section anywhere"
    );
}

#[test]
fn a_bulkhead_config_says_what_the_bulkhead_does() {
    let mut section = BulkheadConfig::default();
    section.max_concurrent = Some(2);
    section.max_queue = Some(0);
    let mut config = Config::default();
    config.defaults.bulkhead = Some(section);
    let bulkhead = config
        .instance("x")
        .unwrap()
        .bulkhead()
        .unwrap()
        .build()
        .unwrap();
    let _a = bulkhead.try_acquire().unwrap();
    let _b = bulkhead.try_acquire().unwrap();
    assert!(matches!(
        bulkhead.try_acquire(),
        Err(Rejected::BulkheadFull)
    ));
}

#[test]
fn keys_of_another_schedule_are_fine_across_layers() {
    // The defaults may give a factor and buckets that only some instances use.
    let config = Config::from_toml(
        "[defaults.retry]\nfactor = 3.0\nstep = \"50ms\"\n[defaults.breaker]\nwindow_buckets = 5\n\
         [instances.flat.retry]\nbackoff = \"constant\"\n[instances.flat.breaker]\nwindow_calls = 20\n",
    )
    .unwrap();
    let flat = config.instance("flat").unwrap();
    assert_eq!(flat.backoff().unwrap().max_attempts_total(), 4);
    let breaker = flat.breaker().unwrap().build().unwrap();
    assert_eq!(breaker.policy().window(), Window::Count { calls: 20 });
}
