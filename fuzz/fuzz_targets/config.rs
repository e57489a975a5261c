//! Fuzzes reading a configuration file: any text gives a configuration or an error with a
//! message, never a panic. A configuration that is read builds a registry, its pipelines and
//! its HTTP clients (validation and building agree), reloads onto itself, and prints back to text that reads
//! as the same configuration.
//!
//! Run from `fuzz/`:
//! `cargo fuzz run --sanitizer none config corpus/config seeds/config -- -dict=dicts/config.dict -max_total_time=60`
//! (`seeds/config` holds whole files to start from).
//! CI runs it for 20 s on every change.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidewall::config::{Config, Problem, Registry};
use tidewall::testing::FakeClock;

fuzz_target!(|text: &str| {
    let config = match Config::from_toml(text) {
        Ok(config) => config,
        Err(error) => {
            let _ = error.to_string();
            return;
        }
    };
    let registry = Registry::builder(config.clone())
        .runtime(FakeClock::new())
        .build()
        .expect("a validated configuration builds");
    // Names the file does not declare get the defaults, which may lack a key without a
    // default: an error then, never a panic.
    let _ = registry.breaker("undeclared");
    let _ = registry.bulkhead("undeclared");
    let _ = registry.rate_limiter("undeclared");
    let _ = registry.retry_budget("undeclared");
    let _ = registry.adaptive_limiter("undeclared");
    let _ = registry.hedge("undeclared");
    let _ = registry.chaos("undeclared");
    // A stack of an undeclared name would have no stage: refused, with its own problem.
    if !config.instances.contains_key("undeclared") {
        let undeclared = |e: tidewall::config::Invalid| *e.problem() == Problem::Undeclared;
        assert!(registry.pipeline("undeclared").is_err_and(undeclared));
        assert!(registry.http_client("undeclared").is_err_and(undeclared));
        let strict = Registry::builder(config.clone())
            .runtime(FakeClock::new())
            .strict(true)
            .build()
            .expect("a validated configuration builds strict too");
        assert!(strict.breaker("undeclared").is_err_and(undeclared));
    }
    for name in config.instances.keys() {
        let instance = config.instance(name).expect("validated: every base exists");
        let _ = instance.backoff();
        let _ = (
            instance.deadline(),
            instance.attempt_timeout(),
            instance.max_retry_after(),
        );
        // A declared instance's pipeline and keyed tables build from what validation passed.
        registry
            .pipeline(name)
            .expect("a validated instance's pipeline builds");
        let _ = registry.keyed_breaker::<u64>(name);
        let _ = registry.keyed_bulkhead::<u64>(name);
        let _ = registry.keyed_rate_limiter::<u64>(name);
        let _ = registry.keyed_adaptive_limiter::<u64>(name);
        let _ = registry.hedge(name);
        // And its HTTP client, whose sections are per host.
        registry
            .http_client(name)
            .expect("a validated instance's HTTP client builds");
    }
    // Reloading the configuration in force changes nothing that could be refused, and no
    // adaptive limiter forgets what it learned.
    let reload = registry
        .reload(config.clone())
        .expect("the configuration in force reloads");
    assert!(reload.relearning.is_empty() && reload.removed.is_empty(), "{reload:?}");
    let printed = toml::to_string(&config).expect("a read configuration prints");
    assert_eq!(Config::from_toml(&printed).expect("and reads back"), config);
});
