//! Hostile black-box tests of hedging by name (`[<layer>.hedge]`, `Registry::hedge`,
//! `LiveHedge`), written from the public docs only. They attack the layering of
//! defaults / `configs.<base>` / instances and its `"off"` toggles, the `min_samples` rules
//! and the documented defaults and thresholds (100 ms, one hedge, exactly 100 samples, a
//! latency change followed within 64 calls), every refusal's key path at the documented
//! bounds, reload semantics (running calls keep their delay and hedges both ways but meet a
//! new budget ratio at once, handles, clones and snapshots agree, refused reloads change
//! nothing, the estimate and the budget's window kept or restarted exactly as documented, a
//! thousand reloads in a row, reloads racing calls and first uses on other threads), the
//! registry listener's `HedgeLaunched` and `BudgetExhausted` events (and, with `metrics`,
//! the counters), `Registry::hedges`, strictness and `max_instances`, hedges around a
//! registry pipeline (deadlines, bulkhead permits, retries, seeded cancellation),
//! classifiers kept by a handle, long idle gaps and extreme settings — in virtual time
//! wherever time matters.
#![cfg(feature = "toml")]
#![allow(clippy::cast_possible_truncation, clippy::type_complexity)]

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tidewall::breaker::State;
use tidewall::classify::{ErrorsWhere, Verdict};
use tidewall::config::{Config, HedgeConfig, LiveHedge, Policies, Problem, Registry, Toggle};
use tidewall::hedge::Idempotent;
use tidewall::telemetry::EventKind;
use tidewall::{Error, Rejected};
use tokio::time::{Instant, advance, sleep};

const MS: Duration = Duration::from_millis(1);
const DAY: Duration = Duration::from_secs(86_400);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn config(text: &str) -> Config {
    Config::from_toml(text).unwrap_or_else(|e| panic!("a valid configuration: {e}\n{text}"))
}

/// Instance `s` hedging after 50 ms, its hedges paid for by a budget of `ratio`.
fn budgeted(ratio: f64) -> Config {
    config(&format!(
        "[instances.s.hedge]\ndelay = \"50ms\"\nbudget_ratio = {ratio}\n"
    ))
}

fn registry(text: &str) -> Registry {
    Registry::new(config(text)).expect("a valid registry")
}

/// Asserts `text` is refused by a builder rule at exactly `path`.
#[track_caller]
fn refused_at(text: &str, path: &str) {
    let e = match Config::from_toml(text) {
        Ok(_) => panic!("accepted, expected a refusal at {path}:\n{text}"),
        Err(e) => e,
    };
    assert_eq!(e.path(), path, "{e}\n{text}");
    assert!(
        matches!(e.problem(), Problem::Rule(_)),
        "a builder's rule: {e:?}"
    );
    assert!(e.to_string().starts_with(&format!("{path}:")), "{e}");
}

/// One hedged call whose copy `n` (from 1) sleeps `took(n)` ms and then answers `Ok(n)`:
/// the answer, and when each copy started (ms after the call).
async fn timed(hedge: &LiveHedge, took: impl Fn(u32) -> u64) -> (Result<u32, ()>, Vec<u64>) {
    let t0 = Instant::now();
    let starts = Mutex::new(Vec::new());
    let answer = hedge
        .call(Idempotent(|| {
            let mut s = starts.lock().unwrap();
            s.push(t0.elapsed().as_millis() as u64);
            let n = s.len() as u32;
            let wait = ms(took(n));
            async move {
                sleep(wait).await;
                Ok(n)
            }
        }))
        .await;
    (answer, starts.into_inner().unwrap())
}

/// As [`timed`], counting the copies only.
async fn hedged(hedge: &LiveHedge, took: impl Fn(u32) -> u64) -> (Result<u32, ()>, u32) {
    let (answer, starts) = timed(hedge, took).await;
    (answer, starts.len() as u32)
}

/// One hedged call whose copies each sleep `took` ms and then fail with `Err(n)`.
async fn failing(hedge: &LiveHedge, took: u64) -> (Result<u32, u32>, u32) {
    let started = AtomicU32::new(0);
    let answer = hedge
        .call(Idempotent(|| {
            let n = started.fetch_add(1, Ordering::Relaxed) + 1;
            async move {
                sleep(ms(took)).await;
                Err::<u32, u32>(n)
            }
        }))
        .await;
    (answer, started.load(Ordering::Relaxed))
}

/// A stuck primary (1 s: well inside the budget's 10 s window, so an unhedged call does not
/// age the window's calls out) and hedges that answer in 10 ms.
fn stuck(n: u32) -> u64 {
    if n == 1 { 1_000 } else { 10 }
}

/// `calls` calls of `latency` ms each, none of them hedged (asserted).
async fn fast_calls(hedge: &LiveHedge, calls: usize, latency: u64) {
    for i in 0..calls {
        let (answer, copies) = hedged(hedge, |_| latency).await;
        assert_eq!(
            (answer, copies),
            (Ok(1), 1),
            "call {i} of {latency} ms was hedged"
        );
    }
}

/// A tiny seeded xorshift64*.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

// ---------------------------------------------------------------------------------------
// Layers, toggles and defaults
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn each_key_comes_from_the_instance_else_its_base_else_the_defaults() {
    let text = "[defaults.hedge]\ndelay = \"70ms\"\nmax_hedges = 3\n\
                [configs.fast.hedge]\ndelay = \"40ms\"\n\
                [instances.a]\nbase = \"fast\"\n[instances.a.hedge]\nmax_hedges = 2\n\
                [instances.b.hedge]\n\
                [instances.c]\nbase = \"fast\"\n[instances.c.hedge]\ndelay = \"10ms\"\n\
                [instances.d]\nbase = \"fast\"\n";
    let c = config(text);
    let reg = Registry::new(c.clone()).unwrap();
    for (name, want) in [
        ("a", (40 * MS, 2)),
        ("b", (70 * MS, 3)),
        ("c", (10 * MS, 3)),
        ("d", (40 * MS, 3)),
        ("undeclared", (70 * MS, 3)),
    ] {
        let built = c.instance(name).unwrap().hedge().unwrap().build().unwrap();
        assert_eq!(
            (built.delay(), built.max_hedges()),
            want,
            "{name} from Config"
        );
        let live = reg.hedge(name).unwrap().hedge();
        assert_eq!(
            (live.delay(), live.max_hedges()),
            want,
            "{name} from Registry"
        );
    }
    // And the behaviour matches the settings: `c` hedges at 10 ms, up to 3 times.
    let (answer, starts) = timed(&reg.hedge("c").unwrap(), |_| 1_000).await;
    assert_eq!((answer, starts), (Ok(1), vec![0, 10, 20, 30]));
}

#[tokio::test(start_paused = true)]
async fn an_empty_section_and_an_undeclared_name_hedge_once_after_100ms() {
    let reg = registry("[instances.a.hedge]\n");
    for name in ["a", "nobody"] {
        let live = reg.hedge(name).unwrap();
        assert_eq!(
            (live.hedge().delay(), live.hedge().max_hedges()),
            (100 * MS, 1)
        );
        // Every copy slow: exactly one hedge, sent at 100 ms; the primary answers first.
        let t0 = Instant::now();
        let (answer, starts) = timed(&live, |_| 1_000).await;
        assert_eq!((answer, starts), (Ok(1), vec![0, 100]), "{name}");
        assert_eq!(t0.elapsed(), 1_000 * MS);
    }
}

#[tokio::test(start_paused = true)]
async fn percentile_off_in_an_instance_overrides_a_percentile_in_the_defaults() {
    let reg = registry(
        "[defaults.hedge]\ndelay = \"300ms\"\npercentile = 0.5\nmin_samples = 5\n\
         [instances.off.hedge]\npercentile = \"off\"\n\
         [instances.on.hedge]\n",
    );
    let (off, on) = (reg.hedge("off").unwrap(), reg.hedge("on").unwrap());
    fast_calls(&off, 10, 20).await;
    fast_calls(&on, 10, 20).await;
    assert_eq!(
        off.hedge().delay(),
        300 * MS,
        "off: the fixed delay, always"
    );
    let learned = on.hedge().delay();
    assert!(
        learned >= 20 * MS && learned < 300 * MS,
        "on: the estimate, {learned:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn percentile_off_in_a_base_is_overridden_by_an_instance_that_turns_it_on() {
    let reg = registry(
        "[defaults.hedge]\ndelay = \"300ms\"\npercentile = 0.9\nmin_samples = 5\n\
         [configs.calm.hedge]\npercentile = \"off\"\n\
         [instances.a]\nbase = \"calm\"\nhedge = {}\n\
         [instances.b]\nbase = \"calm\"\n[instances.b.hedge]\npercentile = 0.5\n",
    );
    let (a, b) = (reg.hedge("a").unwrap(), reg.hedge("b").unwrap());
    fast_calls(&a, 10, 20).await;
    assert_eq!(
        a.hedge().delay(),
        300 * MS,
        "the base's off beats the defaults' on"
    );
    fast_calls(&b, 4, 20).await;
    assert_eq!(b.hedge().delay(), 300 * MS, "4 of the defaults' 5 samples");
    fast_calls(&b, 1, 20).await;
    assert_ne!(b.hedge().delay(), 300 * MS, "the 5th: the estimate");
}

#[tokio::test(start_paused = true)]
async fn budget_ratio_off_above_overrides_a_zero_budget_below() {
    let reg = registry(
        "[defaults.hedge]\ndelay = \"50ms\"\nbudget_ratio = 0\n\
         [configs.zero.hedge]\nbudget_ratio = 0\n\
         [instances.free.hedge]\nbudget_ratio = \"off\"\n\
         [instances.capped.hedge]\n\
         [instances.based]\nbase = \"zero\"\n[instances.based.hedge]\nbudget_ratio = \"off\"\n\
         [instances.based_capped]\nbase = \"zero\"\nhedge = {}\n",
    );
    for name in ["free", "based"] {
        let h = reg.hedge(name).unwrap();
        fast_calls(&h, 5, 1).await;
        assert_eq!(
            hedged(&h, stuck).await,
            (Ok(2), 2),
            "{name}: no budget at all"
        );
    }
    for name in ["capped", "based_capped", "undeclared"] {
        let h = reg.hedge(name).unwrap();
        fast_calls(&h, 50, 1).await;
        assert_eq!(hedged(&h, stuck).await, (Ok(1), 1), "{name}: a zero budget");
    }
}

#[tokio::test(start_paused = true)]
async fn min_samples_in_the_defaults_serves_an_instance_that_sets_percentile() {
    let reg = registry(
        "[defaults.hedge]\nmin_samples = 3\n\
         [instances.a.hedge]\ndelay = \"300ms\"\npercentile = 0.5\n",
    );
    let a = reg.hedge("a").unwrap();
    fast_calls(&a, 2, 20).await;
    assert_eq!(a.hedge().delay(), 300 * MS);
    fast_calls(&a, 1, 20).await;
    assert_ne!(
        a.hedge().delay(),
        300 * MS,
        "the defaults' min_samples of 3"
    );
}

#[tokio::test(start_paused = true)]
async fn an_undeclared_name_over_defaults_with_min_samples_alone_is_refused_at_the_defaults_key() {
    // The file itself is fine: instance `a` turns the percentile on.
    let reg =
        registry("[defaults.hedge]\nmin_samples = 3\n[instances.a.hedge]\npercentile = 0.5\n");
    let e = reg.hedge("other").unwrap_err();
    assert_eq!(e.path(), "defaults.hedge.min_samples", "{e}");
    assert!(reg.hedge("a").is_ok());
}

#[test]
fn min_samples_with_no_percentile_in_any_layer_is_refused_at_the_layer_that_sets_it() {
    refused_at(
        "[defaults.hedge]\nmin_samples = 10\n[instances.a.hedge]\n",
        "defaults.hedge.min_samples",
    );
    refused_at(
        "[configs.b.hedge]\nmin_samples = 10\n[instances.a]\nbase = \"b\"\nhedge = {}\n",
        "configs.b.hedge.min_samples",
    );
    refused_at(
        "[instances.a.hedge]\nmin_samples = 10\n",
        "instances.a.hedge.min_samples",
    );
    refused_at(
        "[defaults.hedge]\ndelay = \"5ms\"\n[instances.a.hedge]\nmin_samples = 10\n",
        "instances.a.hedge.min_samples",
    );
    // A percentile in a config the instance does not use is no layer of the instance's.
    refused_at(
        "[configs.other.hedge]\npercentile = 0.5\n[instances.a.hedge]\nmin_samples = 10\n",
        "instances.a.hedge.min_samples",
    );
}

#[test]
fn min_samples_is_accepted_when_some_layer_sets_percentile_off() {
    for text in [
        "[defaults.hedge]\npercentile = \"off\"\n[instances.a.hedge]\nmin_samples = 10\n",
        "[defaults.hedge]\nmin_samples = 10\n[instances.a.hedge]\npercentile = \"off\"\n",
        "[configs.b.hedge]\npercentile = \"off\"\nmin_samples = 10\n",
        "[configs.b.hedge]\npercentile = \"off\"\n[instances.a]\nbase = \"b\"\n[instances.a.hedge]\nmin_samples = 10\n",
        "[instances.a.hedge]\npercentile = \"off\"\nmin_samples = 10\n",
    ] {
        let c = config(text);
        let built = c.instance("a").unwrap().hedge().unwrap().build().unwrap();
        assert_eq!(built.delay(), 100 * MS, "{text}");
        assert!(Registry::new(c).is_ok(), "{text}");
    }
}

#[test]
fn instance_hedge_refuses_a_configuration_built_in_code_at_the_key_path() {
    let mut hedge = HedgeConfig::default();
    hedge.min_samples = Some(5);
    let mut a = Policies::default();
    a.hedge = Some(hedge);
    let mut c = Config::default();
    c.instances.insert("a".into(), a);
    let e = c.instance("a").unwrap().hedge().unwrap_err();
    assert_eq!(e.path(), "instances.a.hedge.min_samples", "{e}");

    let mut c2 = c.clone();
    let h = c2.instances.get_mut("a").unwrap().hedge.as_mut().unwrap();
    h.min_samples = None;
    h.delay = Some(Duration::ZERO);
    let e = c2.instance("a").unwrap().hedge().unwrap_err();
    assert_eq!(e.path(), "instances.a.hedge.delay", "{e}");

    let mut c3 = Config::default();
    let mut d = HedgeConfig::default();
    d.delay = Some(Duration::MAX);
    c3.defaults.hedge = Some(d);
    let e = c3.instance("x").unwrap().hedge().unwrap_err();
    assert_eq!(e.path(), "defaults.hedge.delay", "{e}");
}

// ---------------------------------------------------------------------------------------
// The min_samples threshold and the recompute cadence
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn with_the_default_min_samples_99_latencies_keep_the_fixed_delay_and_the_100th_switches() {
    let reg = registry("[instances.s.hedge]\ndelay = \"1s\"\npercentile = 0.5\n");
    let s = reg.hedge("s").unwrap();
    fast_calls(&s, 99, 20).await;
    assert_eq!(
        s.hedge().delay(),
        1_000 * MS,
        "99 samples: still the fixed delay"
    );
    fast_calls(&s, 1, 20).await;
    let learned = s.hedge().delay();
    assert!(
        learned >= 20 * MS && learned < 1_000 * MS,
        "100 samples: the estimate, got {learned:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn an_explicit_min_samples_is_the_exact_threshold() {
    for min in [1_u64, 2, 7, 33] {
        let reg = registry(&format!(
            "[instances.s.hedge]\ndelay = \"1s\"\npercentile = 0.9\nmin_samples = {min}\n"
        ));
        let s = reg.hedge("s").unwrap();
        fast_calls(&s, (min - 1) as usize, 20).await;
        assert_eq!(s.hedge().delay(), 1_000 * MS, "min_samples {min}");
        fast_calls(&s, 1, 20).await;
        assert_ne!(s.hedge().delay(), 1_000 * MS, "min_samples {min}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_change_in_latency_moves_the_delay_within_64_calls() {
    // No hedges at all (max_hedges 0), so every call records its own latency once.
    for (min, fast) in [(10_u64, 10_usize), (100, 100), (100, 500), (3, 1_000)] {
        let reg = registry(&format!(
            "[instances.s.hedge]\ndelay = \"5s\"\nmax_hedges = 0\npercentile = 0.9\nmin_samples = {min}\n"
        ));
        let s = reg.hedge("s").unwrap();
        fast_calls(&s, fast, 20).await;
        let first = s.hedge().delay();
        assert!(first >= 20 * MS && first < 400 * MS, "{first:?}");
        // Past about fast / 9 slow calls the p90 is slow; 64 calls after that at the most,
        // the delay follows.
        let moved_by = fast / 9 + 1 + 64;
        let mut moved_at = None;
        for k in 1..=moved_by {
            fast_calls(&s, 1, 400).await;
            if s.hedge().delay() >= 400 * MS {
                moved_at = Some(k);
                break;
            }
        }
        assert!(
            moved_at.is_some(),
            "min_samples {min}, {fast} fast calls: still {:?} after {moved_by} slow calls",
            s.hedge().delay()
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_min_samples_beyond_the_halving_point_is_reached_and_the_estimate_stays_after_halving() {
    for min in [3_000_u64, 5_000] {
        let reg = registry(&format!(
            "[instances.s.hedge]\ndelay = \"5s\"\nmax_hedges = 0\npercentile = 0.5\nmin_samples = {min}\n"
        ));
        let s = reg.hedge("s").unwrap();
        fast_calls(&s, (min - 1) as usize, 20).await;
        assert_eq!(s.hedge().delay(), 5_000 * MS, "min_samples {min}");
        fast_calls(&s, 1, 20).await;
        let learned = s.hedge().delay();
        assert!(
            learned < 5_000 * MS,
            "min_samples {min}: recorded, not held"
        );
        // Past 4,096 held latencies the counts halve: the estimate stays in force.
        fast_calls(&s, 2_000, 20).await;
        assert_eq!(
            s.hedge().delay(),
            learned,
            "min_samples {min}, after halving"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_call_won_by_a_hedge_records_two_latencies() {
    let reg =
        registry("[instances.s.hedge]\ndelay = \"50ms\"\npercentile = 0.5\nmin_samples = 4\n");
    let s = reg.hedge("s").unwrap();
    assert_eq!(hedged(&s, stuck).await, (Ok(2), 2));
    assert_eq!(s.hedge().delay(), 50 * MS, "two samples of four");
    assert_eq!(hedged(&s, stuck).await, (Ok(2), 2));
    let learned = s.hedge().delay();
    assert_ne!(learned, 50 * MS, "two calls won by a hedge: four samples");
    assert!(learned >= 10 * MS && learned < 10_000 * MS, "{learned:?}");
}

#[tokio::test(start_paused = true)]
async fn an_estimate_of_instant_successes_is_zero_and_a_call_not_answered_at_once_hedges_at_once() {
    let reg = registry(
        "[instances.s.hedge]\ndelay = \"80ms\"\nmax_hedges = 2\npercentile = 0.5\nmin_samples = 5\n",
    );
    let s = reg.hedge("s").unwrap();
    fast_calls(&s, 5, 0).await;
    assert_eq!(
        s.hedge().delay(),
        Duration::ZERO,
        "successes the paused clock saw take no time"
    );
    let (answer, starts) = timed(&s, |n| if n < 3 { 1_000 } else { 10 }).await;
    assert_eq!((answer, starts), (Ok(3), vec![0, 0, 0]));
    // A reload that keeps the quantile keeps the zero estimate, whatever the fixed delay.
    reg.reload(config(
        "[instances.s.hedge]\ndelay = \"1h\"\nmax_hedges = 1\npercentile = 0.5\nmin_samples = 5\n",
    ))
    .unwrap();
    assert_eq!(s.hedge().delay(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn percentile_one_is_accepted_and_follows_the_slowest_latency() {
    let reg = registry(
        "[instances.s.hedge]\ndelay = \"5s\"\nmax_hedges = 0\npercentile = 1.0\nmin_samples = 10\n",
    );
    let s = reg.hedge("s").unwrap();
    fast_calls(&s, 9, 10).await;
    fast_calls(&s, 1, 700).await;
    let d = s.hedge().delay();
    assert!(
        d >= 700 * MS && d < 5_000 * MS,
        "p100 covers the slowest: {d:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Refusals and their key paths
// ---------------------------------------------------------------------------------------

#[test]
fn every_out_of_range_value_is_refused_at_its_key_path_in_every_layer() {
    let bad: &[(&str, &str)] = &[
        ("delay", "delay = \"0s\""),
        ("delay", "delay = \"0\""),
        ("delay", "delay = \"0ns\""),
        ("max_hedges", "max_hedges = 4294967295"),
        ("percentile", "percentile = 0"),
        ("percentile", "percentile = 0.0"),
        ("percentile", "percentile = -0.0"),
        ("percentile", "percentile = -0.5"),
        ("percentile", "percentile = 1.0000001"),
        ("percentile", "percentile = 2"),
        ("percentile", "percentile = nan"),
        ("percentile", "percentile = inf"),
        ("percentile", "percentile = -inf"),
        ("min_samples", "percentile = 0.5\nmin_samples = 0"),
        ("budget_ratio", "budget_ratio = 1e-7"),
        ("budget_ratio", "budget_ratio = 0.0000009"),
        ("budget_ratio", "budget_ratio = 1000.1"),
        ("budget_ratio", "budget_ratio = 1e300"),
        ("budget_ratio", "budget_ratio = -1"),
        ("budget_ratio", "budget_ratio = -1e-7"),
        ("budget_ratio", "budget_ratio = nan"),
        ("budget_ratio", "budget_ratio = inf"),
    ];
    for (key, line) in bad {
        refused_at(
            &format!("[defaults.hedge]\n{line}\n"),
            &format!("defaults.hedge.{key}"),
        );
        refused_at(
            &format!("[configs.b.hedge]\n{line}\n"),
            &format!("configs.b.hedge.{key}"),
        );
        refused_at(
            &format!("[instances.a.hedge]\n{line}\n"),
            &format!("instances.a.hedge.{key}"),
        );
        // Also when the instance itself is fine and only a lower layer is bad.
        refused_at(
            &format!("[configs.b.hedge]\n{line}\n[instances.a]\nbase = \"b\"\nhedge = {{}}\n"),
            &format!("configs.b.hedge.{key}"),
        );
    }
}

#[test]
fn the_documented_bounds_themselves_are_accepted_in_every_layer() {
    let good = [
        "delay = \"1ns\"",
        "max_hedges = 0",
        "max_hedges = 4294967294",
        "percentile = 1.0",
        "percentile = 1",
        "percentile = 0.000001",
        "percentile = 1e-300",
        "percentile = 0.5\nmin_samples = 1",
        "percentile = 0.5\nmin_samples = 9223372036854775807",
        "budget_ratio = 0",
        "budget_ratio = 0.0",
        "budget_ratio = 1e-6",
        "budget_ratio = 0.000001",
        "budget_ratio = 1",
        "budget_ratio = 1000",
        "budget_ratio = 1000.0",
    ];
    for line in good {
        for layer in ["defaults", "configs.b", "instances.a"] {
            let text = format!("[{layer}.hedge]\n{line}\n");
            let c = config(&text);
            let built = c.instance("a").unwrap().hedge().unwrap().build();
            assert!(built.is_ok(), "{text}: {:?}", built.err());
        }
    }
    let c = config("[instances.a.hedge]\nmax_hedges = 4294967294\n");
    let h = c.instance("a").unwrap().hedge().unwrap().build().unwrap();
    assert_eq!(h.max_hedges(), u32::MAX - 1);
}

#[tokio::test(start_paused = true)]
async fn the_longest_delays_a_file_can_hold_are_refused_at_their_key_or_never_panic_a_call() {
    // Up to u64::MAX nanoseconds, the most the duration grammar takes. The builder may call
    // such a delay overflowing (then the refusal names the key); if it takes it, a call
    // under it must work.
    for delay in ["213503d", "18446744073709551615ns"] {
        let text = format!("[instances.s.hedge]\ndelay = \"{delay}\"\n");
        let c = match Config::from_toml(&text) {
            Ok(c) => c,
            Err(e) => {
                assert_eq!(e.path(), "instances.s.hedge.delay", "{e}");
                continue;
            }
        };
        let reg = Registry::new(c).unwrap();
        let s = reg.hedge("s").unwrap();
        assert!(s.hedge().delay() >= 213_503 * DAY);
        assert_eq!(hedged(&s, |_| 5).await, (Ok(1), 1));
        // A stuck primary: no hedge within a few days; cut by the caller.
        let copies = AtomicU32::new(0);
        let cut = tokio::time::timeout(
            3 * DAY,
            s.call(Idempotent(|| {
                copies.fetch_add(1, Ordering::Relaxed);
                async {
                    sleep(10 * DAY).await;
                    Ok::<_, ()>(())
                }
            })),
        )
        .await;
        assert!(cut.is_err());
        assert_eq!(copies.load(Ordering::Relaxed), 1, "{delay}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_reload_refuses_every_bad_value_at_its_key_path_and_keeps_the_hedge() {
    let reg = registry("[instances.s.hedge]\ndelay = \"50ms\"\nmax_hedges = 2\n");
    let s = reg.hedge("s").unwrap();
    let mutations: Vec<(&str, Box<dyn Fn(&mut HedgeConfig)>)> = vec![
        ("delay", Box::new(|h| h.delay = Some(Duration::ZERO))),
        ("delay", Box::new(|h| h.delay = Some(Duration::MAX))),
        ("max_hedges", Box::new(|h| h.max_hedges = Some(u32::MAX))),
        (
            "percentile",
            Box::new(|h| h.percentile = Some(Toggle::On(0.0))),
        ),
        (
            "percentile",
            Box::new(|h| h.percentile = Some(Toggle::On(f64::NAN))),
        ),
        (
            "percentile",
            Box::new(|h| h.percentile = Some(Toggle::On(1.000_000_1))),
        ),
        (
            "percentile",
            Box::new(|h| h.percentile = Some(Toggle::On(-1.0))),
        ),
        (
            "min_samples",
            Box::new(|h| {
                h.percentile = Some(Toggle::On(0.5));
                h.min_samples = Some(0);
            }),
        ),
        ("min_samples", Box::new(|h| h.min_samples = Some(10))),
        (
            "budget_ratio",
            Box::new(|h| h.budget_ratio = Some(Toggle::On(1e-7))),
        ),
        (
            "budget_ratio",
            Box::new(|h| h.budget_ratio = Some(Toggle::On(1000.1))),
        ),
        (
            "budget_ratio",
            Box::new(|h| h.budget_ratio = Some(Toggle::On(f64::NAN))),
        ),
        (
            "budget_ratio",
            Box::new(|h| h.budget_ratio = Some(Toggle::On(-0.5))),
        ),
    ];
    for (layer, path_of) in [
        ("defaults", "defaults.hedge"),
        ("configs", "configs.b.hedge"),
        ("instances", "instances.s.hedge"),
    ] {
        for (key, mutate) in &mutations {
            let mut c = config(
                "[configs.b.hedge]\n[instances.s]\nbase = \"b\"\n[instances.s.hedge]\ndelay = \"5ms\"\nmax_hedges = 0\n",
            );
            let target = match layer {
                "defaults" => c.defaults.hedge.get_or_insert_with(HedgeConfig::default),
                "configs" => c.configs.get_mut("b").unwrap().hedge.as_mut().unwrap(),
                _ => c.instances.get_mut("s").unwrap().hedge.as_mut().unwrap(),
            };
            mutate(target);
            // The instance's own delay hides a bad delay below it, which is still refused.
            let e = reg.reload(c).unwrap_err();
            assert_eq!(e.path(), format!("{path_of}.{key}"), "{e}");
            let now = s.hedge();
            assert_eq!(
                (now.delay(), now.max_hedges()),
                (50 * MS, 2),
                "refused at {e}: nothing changes"
            );
        }
    }
    // Still the old settings in a call.
    assert_eq!(timed(&s, |_| 1_000).await.1, vec![0, 50, 100]);
}

// ---------------------------------------------------------------------------------------
// Reloads and running calls
// ---------------------------------------------------------------------------------------

/// Spawns a call through `hedge` whose copies all take 1 s; its start times come back.
fn spawn_slow_call(hedge: &LiveHedge) -> tokio::task::JoinHandle<(Result<u32, ()>, Vec<u64>)> {
    let hedge = hedge.clone();
    tokio::spawn(async move { timed(&hedge, |_| 1_000).await })
}

#[tokio::test(start_paused = true)]
async fn a_running_call_sends_no_hedge_when_a_reload_allows_two() {
    let reg = registry("[instances.s.hedge]\ndelay = \"20ms\"\nmax_hedges = 0\n");
    let s = reg.hedge("s").unwrap();
    let running = spawn_slow_call(&s);
    sleep(5 * MS).await;
    reg.reload(config(
        "[instances.s.hedge]\ndelay = \"20ms\"\nmax_hedges = 2\n",
    ))
    .unwrap();
    assert_eq!(running.await.unwrap(), (Ok(1), vec![0]));
    assert_eq!(timed(&s, |_| 1_000).await, (Ok(1), vec![0, 20, 40]));
}

#[tokio::test(start_paused = true)]
async fn a_running_call_keeps_its_two_hedges_when_a_reload_allows_none() {
    let reg = registry("[instances.s.hedge]\ndelay = \"20ms\"\nmax_hedges = 2\n");
    let s = reg.hedge("s").unwrap();
    let running = spawn_slow_call(&s);
    // Reload between the first and the second hedge.
    sleep(30 * MS).await;
    reg.reload(config(
        "[instances.s.hedge]\ndelay = \"20ms\"\nmax_hedges = 0\n",
    ))
    .unwrap();
    assert_eq!(running.await.unwrap(), (Ok(1), vec![0, 20, 40]));
    assert_eq!(timed(&s, |_| 1_000).await, (Ok(1), vec![0]));
}

#[tokio::test(start_paused = true)]
async fn a_running_call_keeps_its_short_delay_when_a_reload_lengthens_it() {
    let reg = registry("[instances.s.hedge]\ndelay = \"50ms\"\nmax_hedges = 2\n");
    let s = reg.hedge("s").unwrap();
    let running = spawn_slow_call(&s);
    sleep(10 * MS).await;
    reg.reload(config(
        "[instances.s.hedge]\ndelay = \"300ms\"\nmax_hedges = 2\n",
    ))
    .unwrap();
    assert_eq!(running.await.unwrap(), (Ok(1), vec![0, 50, 100]));
    assert_eq!(timed(&s, |_| 1_000).await, (Ok(1), vec![0, 300, 600]));
}

#[tokio::test(start_paused = true)]
async fn a_running_call_keeps_its_long_delay_when_a_reload_shortens_it() {
    let reg = registry("[instances.s.hedge]\ndelay = \"300ms\"\nmax_hedges = 2\n");
    let s = reg.hedge("s").unwrap();
    let running = spawn_slow_call(&s);
    sleep(10 * MS).await;
    reg.reload(config(
        "[instances.s.hedge]\ndelay = \"20ms\"\nmax_hedges = 2\n",
    ))
    .unwrap();
    // After the first hedge too.
    sleep(300 * MS).await;
    reg.reload(config(
        "[instances.s.hedge]\ndelay = \"5ms\"\nmax_hedges = 2\n",
    ))
    .unwrap();
    assert_eq!(running.await.unwrap(), (Ok(1), vec![0, 300, 600]));
    assert_eq!(timed(&s, |_| 1_000).await, (Ok(1), vec![0, 5, 10]));
}

#[tokio::test(start_paused = true)]
async fn many_calls_running_across_several_reloads_each_keep_what_they_started_with() {
    let reg = registry("[instances.s.hedge]\ndelay = \"100ms\"\nmax_hedges = 1\n");
    let s = reg.hedge("s").unwrap();
    let mut running = Vec::new();
    let plan = [(40, 2), (70, 3), (25, 0), (90, 1)];
    let mut expected = vec![(100_u64, 1_u32)];
    running.push(spawn_slow_call(&s));
    for (delay, hedges) in plan {
        sleep(7 * MS).await;
        reg.reload(config(&format!(
            "[instances.s.hedge]\ndelay = \"{delay}ms\"\nmax_hedges = {hedges}\n"
        )))
        .unwrap();
        running.push(spawn_slow_call(&s));
        expected.push((delay, hedges));
    }
    for (call, (delay, hedges)) in running.into_iter().zip(expected) {
        let (answer, starts) = call.await.unwrap();
        let want: Vec<u64> = (0..=u64::from(hedges)).map(|k| k * delay).collect();
        assert_eq!(
            (answer, starts),
            (Ok(1), want),
            "delay {delay}, hedges {hedges}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Handles, clones and snapshots
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn handles_got_before_and_after_a_reload_and_their_clones_share_settings_estimate_and_budget()
{
    let text = |delay: u64| {
        config(&format!(
            "[instances.s.hedge]\ndelay = \"{delay}ms\"\npercentile = 0.5\nmin_samples = 10\nbudget_ratio = 0.1\n"
        ))
    };
    let reg = Registry::new(text(400)).unwrap();
    let before = reg.hedge("s").unwrap();
    let clone = before.clone();
    fast_calls(&before, 3, 20).await;
    reg.reload(text(300)).unwrap();
    let after = reg.hedge("s").unwrap();
    let listed = reg
        .hedges()
        .into_iter()
        .find(|(n, _)| n.as_ref() == "s")
        .unwrap()
        .1;
    for h in [&before, &clone, &after, &listed] {
        assert_eq!(h.hedge().delay(), 300 * MS);
    }
    fast_calls(&clone, 3, 20).await;
    fast_calls(&after, 3, 20).await;
    for h in [&before, &clone, &after, &listed] {
        assert_eq!(h.hedge().delay(), 300 * MS, "9 samples of 10, shared");
    }
    fast_calls(&listed, 1, 20).await;
    let learned = before.hedge().delay();
    assert!(
        learned < 300 * MS,
        "the 10th sample, from any handle: {learned:?}"
    );
    for h in [&clone, &after, &listed] {
        assert_eq!(h.hedge().delay(), learned);
    }
    // The budget: 10 to 18 calls at 0.1 pay for one hedge, whichever handle spends it.
    let mut hedges = 0;
    for h in [
        &before, &clone, &after, &listed, &before, &clone, &after, &listed,
    ] {
        let (_, copies) = hedged(h, |n| if n == 1 { 10_000 } else { 1 }).await;
        hedges += copies - 1;
    }
    assert_eq!(hedges, 1, "one budget for every handle");
}

#[tokio::test(start_paused = true)]
async fn a_hedge_snapshot_from_before_a_reload_keeps_its_settings_and_shares_its_estimate() {
    let text = |delay: u64, hedges: u32| {
        config(&format!(
            "[instances.s.hedge]\ndelay = \"{delay}ms\"\nmax_hedges = {hedges}\npercentile = 0.5\nmin_samples = 10\n"
        ))
    };
    let reg = Registry::new(text(400, 1)).unwrap();
    let live = reg.hedge("s").unwrap();
    let old = live.hedge();
    reg.reload(text(300, 3)).unwrap();
    assert_eq!(
        (old.delay(), old.max_hedges()),
        (400 * MS, 1),
        "the old one stays as it was"
    );
    assert_eq!(live.hedge().max_hedges(), 3);
    // Latencies recorded through the old one count for the new one, and back.
    for _ in 0..5 {
        let answer = old
            .call(Idempotent(|| async {
                sleep(20 * MS).await;
                Ok::<_, ()>(())
            }))
            .await;
        assert_eq!(answer, Ok(()));
    }
    fast_calls(&live, 4, 20).await;
    assert_eq!(live.hedge().delay(), 300 * MS, "9 of 10");
    fast_calls(&live, 1, 20).await;
    let learned = live.hedge().delay();
    assert!(learned < 300 * MS, "{learned:?}");
    assert_eq!(
        old.delay(),
        learned,
        "one estimate, shared with the successor"
    );
}

// ---------------------------------------------------------------------------------------
// Refused reloads
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_reload_refused_for_another_instance_changes_nothing_of_this_hedge() {
    let text = "[instances.s.hedge]\ndelay = \"400ms\"\npercentile = 0.5\nmin_samples = 10\nbudget_ratio = 0.5\n\
                [instances.t.hedge]\n";
    let reg = registry(text);
    let s = reg.hedge("s").unwrap();
    fast_calls(&s, 10, 20).await;
    let learned = s.hedge().delay();
    assert!(learned < 400 * MS);

    // `s` would take a new quantile, min_samples, budget and hedges; `t` is broken.
    let mut bad = config(
        "[instances.s.hedge]\ndelay = \"50ms\"\nmax_hedges = 3\npercentile = 0.9\nmin_samples = 20\nbudget_ratio = 0.01\n\
         [instances.t.hedge]\n",
    );
    bad.instances
        .get_mut("t")
        .unwrap()
        .hedge
        .as_mut()
        .unwrap()
        .delay = Some(Duration::ZERO);
    let e = reg.reload(bad).unwrap_err();
    assert_eq!(e.path(), "instances.t.hedge.delay", "{e}");

    let now = s.hedge();
    assert_eq!(
        (now.delay(), now.max_hedges()),
        (learned, 1),
        "estimate and hedges kept"
    );
    // The budget kept its ratio and window: 11 calls at 0.5 pay for hedges now.
    assert_eq!(hedged(&s, stuck).await, (Ok(2), 2));
    assert_eq!(hedged(&s, stuck).await, (Ok(2), 2));
}

#[tokio::test(start_paused = true)]
async fn a_strict_registry_refuses_a_reload_that_removes_a_hedge_instance_and_keeps_it() {
    let text = "[instances.s.hedge]\ndelay = \"40ms\"\nmax_hedges = 2\n[instances.other.breaker]\n";
    let reg = Registry::builder(config(text))
        .strict(true)
        .build()
        .unwrap();
    let s = reg.hedge("s").unwrap();
    let e = reg
        .reload(config("[instances.other.hedge]\ndelay = \"1ms\"\n"))
        .unwrap_err();
    assert_eq!((e.path(), e.problem()), ("instances.s", &Problem::Removed));
    assert_eq!((s.hedge().delay(), s.hedge().max_hedges()), (40 * MS, 2));
    assert_eq!(timed(&s, |_| 1_000).await.1, vec![0, 40, 80]);
    // Nothing else changed either: `other` has no hedge declared up front still.
    assert_eq!(reg.hedges().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_lax_reload_that_removes_the_instance_puts_its_hedge_on_the_defaults() {
    let reg = registry(
        "[defaults.hedge]\ndelay = \"70ms\"\n[instances.s.hedge]\ndelay = \"10ms\"\nmax_hedges = 3\n",
    );
    let s = reg.hedge("s").unwrap();
    let reload = reg
        .reload(config("[defaults.hedge]\ndelay = \"60ms\"\n"))
        .unwrap();
    assert!(
        reload.removed.iter().any(|n| n.as_ref() == "s"),
        "named in Reload::removed: {reload:?}"
    );
    assert!(reload.retuned >= 1, "and counted in retuned: {reload:?}");
    assert_eq!((s.hedge().delay(), s.hedge().max_hedges()), (60 * MS, 1));
}

#[tokio::test(start_paused = true)]
async fn a_reload_that_drops_the_hedge_section_leaves_the_hedge_on_the_layers_that_remain() {
    let reg = registry(
        "[defaults.hedge]\ndelay = \"70ms\"\nmax_hedges = 2\n\
         [instances.s]\ndeadline = \"1s\"\n[instances.s.hedge]\ndelay = \"10ms\"\nmax_hedges = 0\n",
    );
    let s = reg.hedge("s").unwrap();
    reg.reload(config(
        "[defaults.hedge]\ndelay = \"70ms\"\nmax_hedges = 2\n[instances.s]\ndeadline = \"1s\"\n",
    ))
    .unwrap();
    assert_eq!((s.hedge().delay(), s.hedge().max_hedges()), (70 * MS, 2));
}

#[tokio::test(start_paused = true)]
async fn a_reload_refused_as_full_changes_nothing_of_the_hedges() {
    // Three places: `a` keeps one; two undeclared names take the rest.
    let reg = Registry::builder(config("[instances.a.hedge]\ndelay = \"40ms\"\n"))
        .max_instances(3)
        .build()
        .unwrap();
    let a = reg.hedge("a").unwrap();
    reg.hedge("x").unwrap();
    reg.hedge("y").unwrap();
    // A new declared instance needs a place the hedges cannot keep for it.
    let e = reg
        .reload(config(
            "[instances.a.hedge]\ndelay = \"5ms\"\n[instances.b.hedge]\ndelay = \"5ms\"\n",
        ))
        .unwrap_err();
    assert_eq!(e.problem(), &Problem::Full { max: 3 }, "{e}");
    assert_eq!(a.hedge().delay(), 40 * MS, "nothing changes then");
}

// ---------------------------------------------------------------------------------------
// What a reload keeps: the estimate and the budget's window
// ---------------------------------------------------------------------------------------

fn pct(delay: u64, hedges: u32, quantile: f64, min: &str, budget: &str) -> Config {
    config(&format!(
        "[instances.s.hedge]\ndelay = \"{delay}ms\"\nmax_hedges = {hedges}\npercentile = {quantile}\n{min}{budget}"
    ))
}

#[tokio::test(start_paused = true)]
async fn the_estimate_is_kept_when_only_the_delay_the_hedges_or_the_budget_change() {
    let reg = Registry::new(pct(400, 1, 0.5, "min_samples = 10\n", "")).unwrap();
    let s = reg.hedge("s").unwrap();
    fast_calls(&s, 10, 20).await;
    let learned = s.hedge().delay();
    assert!(learned < 400 * MS);
    for c in [
        pct(300, 1, 0.5, "min_samples = 10\n", ""),
        pct(300, 2, 0.5, "min_samples = 10\n", ""),
        pct(300, 2, 0.5, "min_samples = 10\n", "budget_ratio = 0.5\n"),
        pct(
            200,
            0,
            0.5,
            "min_samples = 10\n",
            "budget_ratio = \"off\"\n",
        ),
    ] {
        reg.reload(c).unwrap();
        assert_eq!(s.hedge().delay(), learned);
    }
}

#[tokio::test(start_paused = true)]
async fn the_estimate_restarts_when_min_samples_changes_even_with_the_same_quantile() {
    let reg = Registry::new(pct(400, 1, 0.5, "min_samples = 10\n", "")).unwrap();
    let s = reg.hedge("s").unwrap();
    fast_calls(&s, 10, 20).await;
    assert!(s.hedge().delay() < 400 * MS);
    reg.reload(pct(400, 1, 0.5, "min_samples = 5\n", ""))
        .unwrap();
    assert_eq!(
        s.hedge().delay(),
        400 * MS,
        "a new estimate, on the fixed delay"
    );
    fast_calls(&s, 4, 20).await;
    assert_eq!(s.hedge().delay(), 400 * MS, "4 of the new 5");
    fast_calls(&s, 1, 20).await;
    assert!(s.hedge().delay() < 400 * MS);
}

#[tokio::test(start_paused = true)]
async fn writing_out_the_default_min_samples_is_no_change_and_keeps_the_estimate() {
    let reg = Registry::new(pct(400, 1, 0.5, "", "")).unwrap();
    let s = reg.hedge("s").unwrap();
    fast_calls(&s, 100, 20).await;
    let learned = s.hedge().delay();
    assert!(learned < 400 * MS);
    reg.reload(pct(400, 1, 0.5, "min_samples = 100\n", ""))
        .unwrap();
    assert_eq!(s.hedge().delay(), learned, "min_samples is 100 either way");
    // Moving the same quantile to the defaults is no change either.
    reg.reload(config(
        "[defaults.hedge]\npercentile = 0.5\nmin_samples = 100\n[instances.s.hedge]\ndelay = \"400ms\"\n",
    ))
    .unwrap();
    assert_eq!(
        s.hedge().delay(),
        learned,
        "the same values from another layer"
    );
}

#[tokio::test(start_paused = true)]
async fn turning_the_percentile_off_and_on_again_starts_a_new_estimate() {
    let reg = Registry::new(pct(400, 1, 0.5, "min_samples = 10\n", "")).unwrap();
    let s = reg.hedge("s").unwrap();
    fast_calls(&s, 10, 20).await;
    assert!(s.hedge().delay() < 400 * MS);
    reg.reload(config(
        "[instances.s.hedge]\ndelay = \"400ms\"\npercentile = \"off\"\nmin_samples = 10\n",
    ))
    .unwrap();
    assert_eq!(s.hedge().delay(), 400 * MS, "off: the fixed delay");
    reg.reload(pct(400, 1, 0.5, "min_samples = 10\n", ""))
        .unwrap();
    assert_eq!(
        s.hedge().delay(),
        400 * MS,
        "the percentile changed twice: a new estimate, not the old one"
    );
}

#[tokio::test(start_paused = true)]
async fn samples_recorded_before_a_reload_count_towards_min_samples_after_it() {
    let reg = Registry::new(pct(400, 1, 0.5, "min_samples = 10\n", "")).unwrap();
    let s = reg.hedge("s").unwrap();
    fast_calls(&s, 6, 20).await;
    reg.reload(pct(350, 2, 0.5, "min_samples = 10\n", ""))
        .unwrap();
    assert_eq!(
        s.hedge().delay(),
        350 * MS,
        "not enough samples: the new fixed delay"
    );
    fast_calls(&s, 3, 20).await;
    assert_eq!(s.hedge().delay(), 350 * MS);
    fast_calls(&s, 1, 20).await;
    assert!(s.hedge().delay() < 350 * MS, "6 + 4 = 10");
}

#[tokio::test(start_paused = true)]
async fn the_budget_keeps_its_window_when_a_reload_changes_its_ratio() {
    let text = |ratio: f64, delay: u64| {
        config(&format!(
            "[instances.s.hedge]\ndelay = \"{delay}ms\"\nbudget_ratio = {ratio}\n"
        ))
    };
    let reg = Registry::new(text(0.5, 50)).unwrap();
    let s = reg.hedge("s").unwrap();
    fast_calls(&s, 4, 1).await;
    reg.reload(text(0.25, 40)).unwrap();
    // 4 (or 5, with this one) calls at 0.25: one hedge, judged by the new ratio.
    assert_eq!(hedged(&s, stuck).await, (Ok(2), 2), "the window was kept");
    assert_eq!(
        hedged(&s, stuck).await,
        (Ok(1), 1),
        "the new ratio: only one"
    );
}

#[tokio::test(start_paused = true)]
async fn a_budget_turned_off_and_on_again_starts_with_an_empty_window() {
    let text = |budget: &str| {
        config(&format!(
            "[instances.s.hedge]\ndelay = \"50ms\"\nbudget_ratio = {budget}\n"
        ))
    };
    let reg = Registry::new(text("0.5")).unwrap();
    let s = reg.hedge("s").unwrap();
    fast_calls(&s, 10, 1).await;
    reg.reload(text("\"off\"")).unwrap();
    assert_eq!(hedged(&s, stuck).await, (Ok(2), 2), "no budget");
    reg.reload(text("0.5")).unwrap();
    assert_eq!(
        hedged(&s, stuck).await,
        (Ok(1), 1),
        "a new budget: its window has only this call"
    );
}

#[tokio::test(start_paused = true)]
async fn a_reload_that_changes_nothing_keeps_everything() {
    let text = "[instances.s.hedge]\ndelay = \"400ms\"\nmax_hedges = 2\npercentile = 0.5\nmin_samples = 10\nbudget_ratio = 0.2\n";
    let reg = registry(text);
    let s = reg.hedge("s").unwrap();
    fast_calls(&s, 10, 20).await;
    let learned = s.hedge().delay();
    assert!(learned >= 20 * MS && learned < 400 * MS);
    // A call running across the reload.
    let running = {
        let s = s.clone();
        tokio::spawn(async move { hedged(&s, stuck).await })
    };
    sleep(MS).await;
    let reload = reg.reload(config(text)).unwrap();
    assert!(
        reload.removed.is_empty() && reload.reset.is_empty(),
        "{reload:?}"
    );
    assert_eq!((s.hedge().delay(), s.hedge().max_hedges()), (learned, 2));
    // 11 calls at 0.2: two hedges, this one's included.
    assert_eq!(running.await.unwrap(), (Ok(2), 2));
    assert_eq!(hedged(&s, stuck).await, (Ok(2), 2), "the window was kept");
    assert_eq!(hedged(&s, stuck).await, (Ok(1), 1), "and it is spent");
}

#[tokio::test(start_paused = true)]
async fn a_thousand_reloads_keep_the_estimate_the_budget_the_listener_and_leak_nothing() {
    let witness = Arc::new(());
    let heard = Arc::new(AtomicUsize::new(0));
    let text = |delay: u64, hedges: u32| {
        config(&format!(
            "[instances.s.hedge]\ndelay = \"{delay}ms\"\nmax_hedges = {hedges}\npercentile = 0.5\nmin_samples = 10\nbudget_ratio = 0.3\n"
        ))
    };
    {
        let (w, h) = (Arc::clone(&witness), Arc::clone(&heard));
        let reg = Registry::builder(text(400, 1))
            .on_event(move |event| {
                let _ = &w;
                if let EventKind::HedgeLaunched { .. } = event.kind {
                    h.fetch_add(1, Ordering::Relaxed);
                }
            })
            .build()
            .unwrap();
        let s = reg.hedge("s").unwrap();
        fast_calls(&s, 10, 20).await;
        let learned = s.hedge().delay();
        assert!(learned < 400 * MS);
        for i in 0..1_000_u64 {
            reg.reload(text(300 + i % 7, 1 + (i % 2) as u32)).unwrap();
            assert_eq!(s.hedge().delay(), learned, "reload {i}");
        }
        assert_eq!(reg.hedges().len(), 1);
        assert_eq!(s.hedge().max_hedges(), 2, "the last reload's");
        // The budget's window survived: 11 calls at 0.3 pay for 3 hedges. The stuck primary
        // is hedged at the estimate, and the first hedge answers.
        let (answer, copies) = hedged(&s, stuck).await;
        assert_eq!((answer, copies), (Ok(2), 2));
        assert_eq!(
            heard.load(Ordering::Relaxed),
            1,
            "the listener, once per hedge"
        );
    }
    assert_eq!(
        Arc::strong_count(&witness),
        1,
        "the registry and its hedges, gone, released the listener"
    );
}

// ---------------------------------------------------------------------------------------
// The registry's listener
// ---------------------------------------------------------------------------------------

type Heard = Arc<Mutex<Vec<(&'static str, String, Option<String>, String)>>>;

fn listening(text: &str) -> (Registry, Heard) {
    listening_to(config(text))
}

fn listening_to(config: Config) -> (Registry, Heard) {
    let heard: Heard = Arc::default();
    let sink = Arc::clone(&heard);
    let reg = Registry::builder(config)
        .on_event(move |event| {
            let kind = match event.kind {
                EventKind::HedgeLaunched { hedge } => format!("launched {hedge}"),
                EventKind::BudgetExhausted => "budget".to_owned(),
                _ => return,
            };
            sink.lock().unwrap().push((
                event.policy,
                event.name.to_owned(),
                event.key.map(str::to_owned),
                kind,
            ));
        })
        .build()
        .unwrap();
    (reg, heard)
}

fn ev(name: &str, kind: &str) -> (&'static str, String, Option<String>, String) {
    ("hedge", name.to_owned(), None, kind.to_owned())
}

#[tokio::test(start_paused = true)]
async fn the_registry_listener_hears_each_hedge_as_policy_hedge_named_after_its_instance() {
    let (reg, heard) = listening(
        "[defaults.hedge]\ndelay = \"10ms\"\n[instances.alpha.hedge]\nmax_hedges = 2\n[instances.beta.hedge]\n",
    );
    let alpha = reg.hedge("alpha").unwrap();
    let beta = reg.hedge("beta").unwrap();
    let gamma = reg.hedge("gamma").unwrap();
    let snapshot = alpha.hedge();
    assert_eq!(hedged(&alpha, |_| 100).await, (Ok(1), 3));
    assert_eq!(hedged(&beta, |_| 100).await, (Ok(1), 2));
    assert_eq!(hedged(&gamma, |_| 100).await, (Ok(1), 2));
    reg.reload(config(
        "[defaults.hedge]\ndelay = \"10ms\"\nmax_hedges = 3\n[instances.alpha.hedge]\nmax_hedges = 1\n[instances.beta.hedge]\n",
    ))
    .unwrap();
    assert_eq!(hedged(&alpha, |_| 100).await, (Ok(1), 2));
    assert_eq!(hedged(&beta, |_| 100).await, (Ok(1), 4));
    assert_eq!(hedged(&gamma, |_| 100).await, (Ok(1), 4));
    // The snapshot from before the reload still tells the registry's listener.
    snapshot
        .call(Idempotent(|| async {
            sleep(100 * MS).await;
            Ok::<_, ()>(())
        }))
        .await
        .unwrap();
    let want = vec![
        ev("alpha", "launched 1"),
        ev("alpha", "launched 2"),
        ev("beta", "launched 1"),
        ev("gamma", "launched 1"),
        ev("alpha", "launched 1"),
        ev("beta", "launched 1"),
        ev("beta", "launched 2"),
        ev("beta", "launched 3"),
        ev("gamma", "launched 1"),
        ev("gamma", "launched 2"),
        ev("gamma", "launched 3"),
        ev("alpha", "launched 1"),
        ev("alpha", "launched 2"),
    ];
    assert_eq!(*heard.lock().unwrap(), want);
}

#[tokio::test(start_paused = true)]
async fn the_registry_listener_hears_budget_refusals_once_then_twice_when_every_attempt_failed() {
    let (reg, heard) = listening("[instances.s.hedge]\ndelay = \"20ms\"\nbudget_ratio = 0\n");
    let s = reg.hedge("s").unwrap();
    // The primary answers late: the hedge at 20 ms is refused once, and none follows.
    assert_eq!(hedged(&s, |_| 100).await, (Ok(1), 1));
    assert_eq!(*heard.lock().unwrap(), vec![ev("s", "budget")]);
    heard.lock().unwrap().clear();
    // The primary fails late: refused at 20 ms, asked once more as it fails, refused again.
    assert_eq!(failing(&s, 100).await, (Err(1), 1));
    assert_eq!(
        *heard.lock().unwrap(),
        vec![ev("s", "budget"), ev("s", "budget")]
    );
    heard.lock().unwrap().clear();
    // Across a reload that only moves the delay: the same.
    reg.reload(config(
        "[instances.s.hedge]\ndelay = \"30ms\"\nbudget_ratio = 0\nmax_hedges = 4\n",
    ))
    .unwrap();
    let t0 = Instant::now();
    assert_eq!(failing(&s, 100).await, (Err(1), 1));
    assert_eq!(
        t0.elapsed(),
        100 * MS,
        "the second refusal ends the call at once"
    );
    assert_eq!(
        *heard.lock().unwrap(),
        vec![ev("s", "budget"), ev("s", "budget")]
    );
}

// ---------------------------------------------------------------------------------------
// Listing, strictness, bounds
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn hedges_lists_every_declared_hedge_section_up_front_by_name_and_nothing_else() {
    let reg = registry(
        "[defaults.hedge]\ndelay = \"30ms\"\n\
         [configs.hedged.hedge]\nmax_hedges = 2\n\
         [instances.zeta.hedge]\n\
         [instances.alpha]\nbase = \"hedged\"\n\
         [instances.mid.breaker]\n\
         [instances.beta.hedge]\ndelay = \"5ms\"\n",
    );
    let names = |r: &Registry| -> Vec<String> {
        r.hedges()
            .into_iter()
            .map(|(n, _)| n.as_ref().to_owned())
            .collect()
    };
    assert_eq!(
        names(&reg),
        ["alpha", "beta", "zeta"],
        "the base's section counts; defaults only fill in"
    );
    let listed = reg.hedges();
    assert_eq!(listed[0].1.hedge().max_hedges(), 2);
    assert_eq!(listed[1].1.hedge().delay(), 5 * MS);
    reg.hedge("mid").unwrap();
    reg.hedge("aaa_undeclared").unwrap();
    reg.hedge("mid").unwrap();
    assert_eq!(
        names(&reg),
        ["aaa_undeclared", "alpha", "beta", "mid", "zeta"]
    );
}

#[tokio::test(start_paused = true)]
async fn a_reload_that_adds_a_hedge_instance_lists_it_at_once() {
    let reg = registry("[instances.a.hedge]\n");
    let reload = reg
        .reload(config(
            "[instances.a.hedge]\n[instances.b.hedge]\ndelay = \"7ms\"\n",
        ))
        .unwrap();
    let listed: Vec<String> = reg
        .hedges()
        .into_iter()
        .map(|(n, _)| n.as_ref().to_owned())
        .collect();
    assert_eq!(listed, ["a", "b"], "{reload:?}");
    assert_eq!(
        reload.built, 1,
        "b's hedge is a policy built by the reload: {reload:?}"
    );
    assert_eq!(reg.hedge("b").unwrap().hedge().delay(), 7 * MS);
}

#[tokio::test(start_paused = true)]
async fn a_strict_registry_refuses_undeclared_hedges_at_the_instance_path_and_serves_declared_ones()
{
    let reg = Registry::builder(config(
        "[defaults.hedge]\ndelay = \"30ms\"\n[instances.a.hedge]\n[instances.b.breaker]\n",
    ))
    .strict(true)
    .build()
    .unwrap();
    for name in ["c", "A", "a_", "b2"] {
        let e = reg.hedge(name).unwrap_err();
        assert_eq!(
            (e.path(), e.problem()),
            (format!("instances.{name}").as_str(), &Problem::Undeclared),
            "{name:?}"
        );
    }
    assert_eq!(reg.hedge("a").unwrap().hedge().delay(), 30 * MS);
    assert_eq!(
        reg.hedge("b").unwrap().hedge().delay(),
        30 * MS,
        "declared without a hedge section: the layers there are"
    );
    let names: Vec<String> = reg
        .hedges()
        .into_iter()
        .map(|(n, _)| n.as_ref().to_owned())
        .collect();
    assert_eq!(names, ["a", "b"], "no undeclared name was made");
}

#[tokio::test(start_paused = true)]
async fn max_instances_bounds_undeclared_hedges_and_keeps_a_place_for_every_declared_instance() {
    let reg = Registry::builder(config(
        "[instances.a.hedge]\n[instances.b.breaker]\n[instances.c.bulkhead]\nmax_concurrent = 1\n",
    ))
    .max_instances(6)
    .build()
    .unwrap();
    let mut made = Vec::new();
    for i in 0..1_000 {
        let name = format!("req-{i}");
        match reg.hedge(&name) {
            Ok(_) => made.push(name),
            Err(e) => assert_eq!(e.problem(), &Problem::Full { max: 6 }, "{name}: {e}"),
        }
    }
    assert_eq!(
        made,
        ["req-0", "req-1", "req-2"],
        "6 places, 3 kept for a, b and c"
    );
    // Those held are still served; every declared instance still has its place.
    assert!(reg.hedge("req-1").is_ok());
    for name in ["a", "b", "c"] {
        assert!(reg.hedge(name).is_ok(), "{name}");
    }
    assert!(reg.hedge("req-999").is_err());
    assert_eq!(reg.hedges().len(), 6);
}

// ---------------------------------------------------------------------------------------
// Composition with the instance's pipeline
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn each_hedged_copy_of_a_pipeline_call_runs_under_its_own_deadline() {
    let reg = registry(
        "[instances.s]\ndeadline = \"50ms\"\n[instances.s.hedge]\ndelay = \"20ms\"\n[instances.s.breaker]\n",
    );
    let (hedge, pipeline) = (reg.hedge("s").unwrap(), reg.pipeline("s").unwrap());
    let copies = AtomicU32::new(0);
    let t0 = Instant::now();
    let answer = hedge
        .call(Idempotent(|| {
            copies.fetch_add(1, Ordering::Relaxed);
            pipeline.call(|| async {
                sleep(1_000 * MS).await;
                Ok::<u32, &str>(1)
            })
        }))
        .await;
    assert_eq!(answer, Err(Error::Rejected(Rejected::DeadlineExceeded)));
    assert_eq!(copies.load(Ordering::Relaxed), 2);
    assert_eq!(
        t0.elapsed(),
        70 * MS,
        "the hedge, started at 20 ms, had its own 50 ms"
    );
}

#[tokio::test(start_paused = true)]
async fn each_hedged_copy_is_retried_by_the_pipeline_as_one_call() {
    let reg = registry(
        "[instances.s.hedge]\ndelay = \"100ms\"\n\
         [instances.s.retry]\nbackoff = \"constant\"\ninitial_delay = \"10ms\"\nmax_attempts = 2\njitter = \"none\"\n",
    );
    let (hedge, pipeline) = (reg.hedge("s").unwrap(), reg.pipeline("s").unwrap());
    let (copies, attempts) = (AtomicU32::new(0), AtomicU32::new(0));
    let t0 = Instant::now();
    let answer = hedge
        .call(Idempotent(|| {
            copies.fetch_add(1, Ordering::Relaxed);
            pipeline.call(|| {
                let n = attempts.fetch_add(1, Ordering::Relaxed) + 1;
                async move { if n < 4 { Err("busy") } else { Ok(n) } }
            })
        }))
        .await;
    // Copy 1: attempts 1 and 2 fail (0, 10 ms); every copy failed, so copy 2 starts at
    // once: attempt 3 fails, attempt 4 wins at 20 ms.
    assert_eq!(answer, Ok(4));
    assert_eq!(copies.load(Ordering::Relaxed), 2);
    assert_eq!(t0.elapsed(), 20 * MS);
}

#[tokio::test(start_paused = true)]
async fn hedged_copies_take_bulkhead_permits_of_their_own_and_give_every_one_back() {
    let reg = registry(
        "[instances.s.hedge]\ndelay = \"10ms\"\nmax_hedges = 2\n\
         [instances.s.bulkhead]\nmax_concurrent = 2\nmax_queue = 0\n",
    );
    let (hedge, pipeline, bulkhead) = (
        reg.hedge("s").unwrap(),
        reg.pipeline("s").unwrap(),
        reg.bulkhead("s").unwrap(),
    );
    let peak = AtomicUsize::new(0);
    let ran = AtomicU32::new(0);
    let answer = hedge
        .call(Idempotent(|| {
            pipeline.call(|| {
                ran.fetch_add(1, Ordering::Relaxed);
                peak.fetch_max(bulkhead.in_flight(), Ordering::Relaxed);
                async {
                    sleep(100 * MS).await;
                    Ok::<_, &str>(())
                }
            })
        }))
        .await;
    assert_eq!(answer, Ok(()));
    assert_eq!(
        ran.load(Ordering::Relaxed),
        2,
        "the third copy met a full bulkhead"
    );
    assert_eq!(peak.load(Ordering::Relaxed), 2);
    assert_eq!(bulkhead.in_flight(), 0);
}

/// Counts attempts alive: one is made as an attempt starts and dropped with its future.
struct Alive(Arc<AtomicUsize>);
impl Alive {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(Arc::clone(count))
    }
}
impl Drop for Alive {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[tokio::test(start_paused = true)]
async fn hedged_pipeline_calls_dropped_at_seeded_random_points_give_back_every_permit() {
    let text = |delay: u64, hedges: u32| {
        config(&format!(
            "[instances.s.hedge]\ndelay = \"{delay}ms\"\nmax_hedges = {hedges}\n\
             [instances.s.bulkhead]\nmax_concurrent = 3\nmax_queue = 0\n\
             [instances.s.breaker]\nconsecutive_failures = 1\n\
             [instances.s.retry]\nbackoff = \"constant\"\ninitial_delay = \"3ms\"\nmax_attempts = 2\njitter = \"none\"\n"
        ))
    };
    let reg = Registry::new(text(5, 2)).unwrap();
    let (hedge, pipeline) = (reg.hedge("s").unwrap(), reg.pipeline("s").unwrap());
    let bulkhead = reg.bulkhead("s").unwrap();
    let breaker = reg.breaker("s").unwrap();
    let alive = Arc::new(AtomicUsize::new(0));
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let (mut finished, mut cut) = (0, 0);
    for round in 0..300 {
        if round % 50 == 49 {
            let (d, h) = (1 + rng.below(20), rng.below(4) as u32);
            reg.reload(text(d, h)).unwrap();
        }
        let latencies: Vec<u64> = (0..8).map(|_| rng.below(40)).collect();
        let copy = AtomicUsize::new(0);
        let drop_at = ms(rng.below(60));
        let call = hedge.call(Idempotent(|| {
            let n = copy.fetch_add(1, Ordering::Relaxed);
            let latency = ms(latencies[n % latencies.len()]);
            let alive = Arc::clone(&alive);
            pipeline.call(move || {
                let guard = Alive::new(&alive);
                async move {
                    sleep(latency).await;
                    drop(guard);
                    Ok::<_, &str>(n)
                }
            })
        }));
        match tokio::time::timeout(drop_at, call).await {
            Ok(answer) => {
                assert!(answer.is_ok(), "round {round}: {answer:?}");
                finished += 1;
            }
            Err(_) => cut += 1,
        }
        assert_eq!(
            alive.load(Ordering::Relaxed),
            0,
            "round {round}: an attempt outlived its call"
        );
        assert_eq!(bulkhead.in_flight(), 0, "round {round}: a permit was kept");
        assert_eq!(
            breaker.state(),
            State::Closed,
            "round {round}: a drop counted as a failure"
        );
    }
    assert!(
        finished > 20 && cut > 20,
        "both paths taken: {finished} finished, {cut} cut"
    );
    // Every permit is there to take.
    let held: Vec<_> = (0..3).map(|_| bulkhead.try_acquire().unwrap()).collect();
    assert!(bulkhead.try_acquire().is_err());
    drop(held);
}

#[tokio::test(start_paused = true)]
async fn a_classifier_set_on_a_handle_survives_many_reloads_and_other_handles_keep_theirs() {
    let reg = registry("[instances.s.hedge]\nmax_hedges = 1\n");
    let picky = reg
        .hedge("s")
        .unwrap()
        .classify(ErrorsWhere(|e: &&str| *e == "busy"));
    let plain = reg.hedge("s").unwrap();
    for i in 0..50_u32 {
        reg.reload(config(&format!(
            "[instances.s.hedge]\nmax_hedges = {}\ndelay = \"{}ms\"\n",
            2 + i % 3,
            10 + i
        )))
        .unwrap();
    }
    let max = plain.hedge().max_hedges();
    assert_eq!(max, 2 + 49 % 3);
    fn run<'a>(
        copies: &'a AtomicU32,
        err: &'static str,
    ) -> impl FnMut() -> std::future::Ready<Result<u32, &'static str>> + 'a {
        move || {
            copies.fetch_add(1, Ordering::Relaxed);
            std::future::ready(Err(err))
        }
    }
    let copies = AtomicU32::new(0);
    assert_eq!(
        picky.call(Idempotent(run(&copies, "not found"))).await,
        Err("not found")
    );
    assert_eq!(copies.load(Ordering::Relaxed), 1, "not worth another copy");
    let copies = AtomicU32::new(0);
    assert_eq!(
        picky.call(Idempotent(run(&copies, "busy"))).await,
        Err("busy")
    );
    assert_eq!(
        copies.load(Ordering::Relaxed),
        1 + max,
        "busy: every hedge, back to back"
    );
    let copies = AtomicU32::new(0);
    assert_eq!(
        plain.call(Idempotent(run(&copies, "not found"))).await,
        Err("not found")
    );
    assert_eq!(
        copies.load(Ordering::Relaxed),
        1 + max,
        "the default classifier hedges every Err"
    );
    // A clone of the picky handle is picky too.
    let twin = picky.clone();
    let copies = AtomicU32::new(0);
    assert_eq!(
        twin.call(Idempotent(run(&copies, "not found"))).await,
        Err("not found")
    );
    assert_eq!(copies.load(Ordering::Relaxed), 1);
}

#[tokio::test(start_paused = true)]
async fn a_closure_classifier_that_ends_the_call_is_kept_across_reloads() {
    let reg = registry("[instances.s.hedge]\ndelay = \"10ms\"\n");
    let stop = reg
        .hedge("s")
        .unwrap()
        .classify(|r: Result<&u32, &&str>| match r {
            Ok(v) if *v == 0 => Verdict::Failure,
            Ok(_) => Verdict::Success,
            Err(_) => Verdict::RetryableFailure,
        });
    reg.reload(config(
        "[instances.s.hedge]\ndelay = \"10ms\"\nmax_hedges = 3\n",
    ))
    .unwrap();
    let copies = AtomicU32::new(0);
    let answer = stop
        .call(Idempotent(|| {
            copies.fetch_add(1, Ordering::Relaxed);
            async { Ok::<u32, &str>(0) }
        }))
        .await;
    assert_eq!(
        answer,
        Ok(0),
        "a Failure verdict ends the call with that result"
    );
    assert_eq!(copies.load(Ordering::Relaxed), 1);
}

// ---------------------------------------------------------------------------------------
// Long idle gaps and extreme settings
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn the_budget_counts_calls_for_its_10s_window_and_forgets_them_after_days_idle() {
    let reg = registry("[instances.s.hedge]\ndelay = \"50ms\"\nbudget_ratio = 0.1\n");
    let s = reg.hedge("s").unwrap();
    fast_calls(&s, 20, 1).await;
    advance(Duration::from_secs(5)).await;
    assert_eq!(
        hedged(&s, stuck).await,
        (Ok(2), 2),
        "5 s later: still in the window"
    );
    fast_calls(&s, 20, 1).await;
    advance(Duration::from_secs(11)).await;
    assert_eq!(
        hedged(&s, stuck).await,
        (Ok(1), 1),
        "11 s later: out of the window"
    );
    fast_calls(&s, 20, 1).await;
    advance(3 * DAY).await;
    assert_eq!(
        hedged(&s, stuck).await,
        (Ok(1), 1),
        "days later: nothing left"
    );
    fast_calls(&s, 20, 1).await;
    assert_eq!(
        hedged(&s, stuck).await,
        (Ok(2), 2),
        "and it earns again after the gap"
    );
    advance(400 * DAY).await;
    fast_calls(&s, 20, 1).await;
    assert_eq!(hedged(&s, stuck).await, (Ok(2), 2), "after a year too");
}

#[tokio::test(start_paused = true)]
async fn the_budget_window_kept_by_a_reload_still_expires_after_10s() {
    let text = |delay: u64| {
        config(&format!(
            "[instances.s.hedge]\ndelay = \"{delay}ms\"\nbudget_ratio = 0.1\n"
        ))
    };
    let reg = Registry::new(text(50)).unwrap();
    let s = reg.hedge("s").unwrap();
    fast_calls(&s, 20, 1).await;
    advance(Duration::from_secs(11)).await;
    reg.reload(text(40)).unwrap();
    assert_eq!(
        hedged(&s, stuck).await,
        (Ok(1), 1),
        "expired calls are not revived"
    );
}

#[tokio::test(start_paused = true)]
async fn the_estimate_does_not_fade_with_idle_time_alone() {
    let reg =
        registry("[instances.s.hedge]\ndelay = \"500ms\"\npercentile = 0.5\nmin_samples = 10\n");
    let s = reg.hedge("s").unwrap();
    fast_calls(&s, 10, 20).await;
    let learned = s.hedge().delay();
    assert!(learned < 500 * MS);
    advance(30 * DAY).await;
    assert_eq!(s.hedge().delay(), learned);
    // And a stuck primary is hedged after it.
    let (answer, starts) = timed(&s, stuck).await;
    assert_eq!(answer, Ok(2));
    let at = learned.as_millis() as u64;
    assert!(
        starts[1] == at || starts[1] == at + 1,
        "hedged at {} ms, the estimate {learned:?}",
        starts[1]
    );
}

#[tokio::test(start_paused = true)]
async fn a_hedge_idle_for_a_year_still_hedges_at_exactly_its_delay() {
    let reg = registry("[instances.s.hedge]\ndelay = \"25ms\"\nmax_hedges = 3\n");
    let s = reg.hedge("s").unwrap();
    advance(365 * DAY).await;
    assert_eq!(timed(&s, |_| 1_000).await, (Ok(1), vec![0, 25, 50, 75]));
    advance(365 * DAY).await;
    reg.reload(config(
        "[instances.s.hedge]\ndelay = \"15ms\"\nmax_hedges = 1\n",
    ))
    .unwrap();
    advance(365 * DAY).await;
    assert_eq!(timed(&s, |_| 1_000).await, (Ok(1), vec![0, 15]));
}

#[tokio::test(start_paused = true)]
async fn a_large_max_hedges_starts_exactly_one_plus_n_copies_of_an_op_that_fails_at_once() {
    let reg = registry("[instances.s.hedge]\nmax_hedges = 1000\ndelay = \"1h\"\n");
    let s = reg.hedge("s").unwrap();
    let t0 = Instant::now();
    assert_eq!(failing(&s, 0).await, (Err(1001), 1001));
    assert_eq!(t0.elapsed(), Duration::ZERO, "back to back, no delay");
}

#[tokio::test(start_paused = true)]
async fn a_budget_bounds_the_back_to_back_copies_of_an_op_that_fails_at_once() {
    let reg = registry("[instances.s.hedge]\nmax_hedges = 1000\nbudget_ratio = 0.5\n");
    let s = reg.hedge("s").unwrap();
    fast_calls(&s, 9, 1).await;
    // 10 calls at 0.5: at most 5 hedges, however many max_hedges allows.
    let (answer, copies) = failing(&s, 0).await;
    assert!(answer.is_err());
    assert!(
        (5..=6).contains(&copies),
        "1 + at most 5 hedges: {copies} copies"
    );
}

#[tokio::test(start_paused = true)]
async fn a_one_nanosecond_delay_hedges_all_but_at_once() {
    let reg = registry("[instances.s.hedge]\ndelay = \"1ns\"\nmax_hedges = 3\n");
    let s = reg.hedge("s").unwrap();
    assert_eq!(s.hedge().delay(), Duration::from_nanos(1));
    let (answer, starts) = timed(&s, |n| if n < 4 { 1_000 } else { 10 }).await;
    assert_eq!(answer, Ok(4));
    assert_eq!(starts.len(), 4);
    assert!(starts.iter().all(|&t| t <= 3), "{starts:?}");
}

// ---------------------------------------------------------------------------------------
// More reload corners
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_snapshot_from_before_a_reload_shares_the_budget_window_with_its_successor() {
    let text = |delay: u64| {
        config(&format!(
            "[instances.s.hedge]\ndelay = \"{delay}ms\"\nbudget_ratio = 0.1\n"
        ))
    };
    let reg = Registry::new(text(50)).unwrap();
    let live = reg.hedge("s").unwrap();
    let old = live.hedge();
    reg.reload(text(40)).unwrap();
    // Twenty calls through the old snapshot pay for the live handle's hedges.
    for _ in 0..20 {
        let answer = old
            .call(Idempotent(|| async {
                sleep(MS).await;
                Ok::<_, ()>(())
            }))
            .await;
        assert_eq!(answer, Ok(()));
    }
    assert_eq!(hedged(&live, stuck).await, (Ok(2), 2));
    // A hedge the old snapshot spends is spent for the live handle too.
    let copies = AtomicU32::new(0);
    let answer = old
        .call(Idempotent(|| {
            let n = copies.fetch_add(1, Ordering::Relaxed) + 1;
            async move {
                sleep(ms(stuck(n))).await;
                Ok::<_, ()>(n)
            }
        }))
        .await;
    assert_eq!((answer, copies.load(Ordering::Relaxed)), (Ok(2), 2));
    assert_eq!(
        hedged(&live, stuck).await,
        (Ok(1), 1),
        "23 calls at 0.1: two hedges, spent"
    );
}

/// Ten fast calls under a budget of `from`, then a stuck call, then a reload to `to` while it
/// runs: what it answers (and how many copies ran), and what the listener heard.
async fn running_call_across_a_ratio_change(
    from: f64,
    to: f64,
) -> (
    (Result<u32, ()>, u32),
    Vec<(&'static str, String, Option<String>, String)>,
) {
    let (reg, heard) = listening_to(budgeted(from));
    let s = reg.hedge("s").unwrap();
    fast_calls(&s, 10, 1).await;
    let running = {
        let s = s.clone();
        tokio::spawn(async move { hedged(&s, stuck).await })
    };
    sleep(10 * MS).await;
    reg.reload(budgeted(to)).unwrap();
    let answered = running.await.unwrap();
    let heard = heard.lock().unwrap().clone();
    (answered, heard)
}

#[tokio::test(start_paused = true)]
async fn a_running_call_meets_a_lowered_budget_ratio_at_once() {
    let (answered, heard) = running_call_across_a_ratio_change(0.5, 0.0).await;
    assert_eq!(
        answered,
        (Ok(1), 1),
        "one budget, its new ratio at once: the running call's hedge is refused"
    );
    assert_eq!(heard, vec![ev("s", "budget")]);
}

#[tokio::test(start_paused = true)]
async fn a_running_call_meets_a_raised_budget_ratio_at_once() {
    let (answered, heard) = running_call_across_a_ratio_change(0.0, 0.5).await;
    assert_eq!(
        answered,
        (Ok(2), 2),
        "the window kept, the new ratio at once: the running call's hedge is paid for"
    );
    assert_eq!(heard, vec![ev("s", "launched 1")]);
}

#[tokio::test(start_paused = true)]
async fn a_snapshot_from_before_a_reload_is_judged_by_the_new_budget_ratio() {
    let reg = Registry::new(budgeted(0.5)).unwrap();
    let live = reg.hedge("s").unwrap();
    fast_calls(&live, 10, 1).await;
    let old = live.hedge();
    reg.reload(budgeted(0.0)).unwrap();
    let copies = AtomicU32::new(0);
    let answer = old
        .call(Idempotent(|| {
            let n = copies.fetch_add(1, Ordering::Relaxed) + 1;
            async move {
                sleep(ms(stuck(n))).await;
                Ok::<_, ()>(n)
            }
        }))
        .await;
    assert_eq!(
        (answer, copies.load(Ordering::Relaxed)),
        (Ok(1), 1),
        "the budget it shares with its successor has the new ratio"
    );
}

#[tokio::test(start_paused = true)]
async fn a_zero_budget_in_between_keeps_the_window_for_when_the_ratio_comes_back() {
    let reg = Registry::new(budgeted(0.1)).unwrap();
    let s = reg.hedge("s").unwrap();
    fast_calls(&s, 20, 1).await;
    reg.reload(budgeted(0.0)).unwrap();
    assert_eq!(
        hedged(&s, stuck).await,
        (Ok(1), 1),
        "a zero budget sends no hedge"
    );
    reg.reload(budgeted(0.1)).unwrap();
    assert_eq!(
        hedged(&s, stuck).await,
        (Ok(2), 2),
        "both had a budget: the window was kept"
    );
}

#[tokio::test(start_paused = true)]
async fn a_strict_reload_is_refused_for_a_declared_instance_whose_hedge_the_registry_holds() {
    let text = "[instances.a.hedge]\n[instances.b]\ndeadline = \"1s\"\n";
    let without_b = "[instances.a.hedge]\n";
    // Nothing of `b` held: removing it is fine.
    let fresh = Registry::builder(config(text))
        .strict(true)
        .build()
        .unwrap();
    assert!(fresh.reload(config(without_b)).is_ok());
    // Its hedge held (from the defaults): removing it is refused, and the hedge stays.
    let reg = Registry::builder(config(&format!(
        "[defaults.hedge]\ndelay = \"30ms\"\n{text}"
    )))
    .strict(true)
    .build()
    .unwrap();
    let b = reg.hedge("b").unwrap();
    let e = reg
        .reload(config(&format!(
            "[defaults.hedge]\ndelay = \"5ms\"\n{without_b}"
        )))
        .unwrap_err();
    assert_eq!((e.path(), e.problem()), ("instances.b", &Problem::Removed));
    assert_eq!(b.hedge().delay(), 30 * MS);
}

#[tokio::test(start_paused = true)]
async fn an_undeclared_hedge_follows_a_reload_that_declares_it() {
    let reg = registry("[defaults.hedge]\ndelay = \"70ms\"\n");
    let x = reg.hedge("x").unwrap();
    assert_eq!(x.hedge().delay(), 70 * MS);
    reg.reload(config(
        "[defaults.hedge]\ndelay = \"70ms\"\n[instances.x.hedge]\ndelay = \"5ms\"\nmax_hedges = 2\n",
    ))
    .unwrap();
    assert_eq!((x.hedge().delay(), x.hedge().max_hedges()), (5 * MS, 2));
    assert_eq!(timed(&x, |_| 100).await, (Ok(1), vec![0, 5, 10]));
}

#[tokio::test(start_paused = true)]
async fn a_configuration_built_in_code_with_off_toggles_reloads_like_the_text() {
    let reg = registry(
        "[defaults.hedge]\npercentile = 0.5\nmin_samples = 3\nbudget_ratio = 0\n[instances.s.hedge]\ndelay = \"40ms\"\n",
    );
    let s = reg.hedge("s").unwrap();
    assert_eq!(hedged(&s, stuck).await, (Ok(1), 1), "a zero budget");
    let mut c = config(
        "[defaults.hedge]\npercentile = 0.5\nmin_samples = 3\nbudget_ratio = 0\n[instances.s.hedge]\ndelay = \"40ms\"\n",
    );
    let h = c.instances.get_mut("s").unwrap().hedge.as_mut().unwrap();
    h.percentile = Some(Toggle::Off);
    h.budget_ratio = Some(Toggle::Off);
    c.validate().unwrap();
    reg.reload(c).unwrap();
    fast_calls(&s, 5, 0).await;
    assert_eq!(
        s.hedge().delay(),
        40 * MS,
        "percentile off: the fixed delay"
    );
    assert_eq!(hedged(&s, stuck).await, (Ok(2), 2), "budget off: hedged");
}

#[tokio::test(start_paused = true)]
async fn the_largest_budget_ratio_pays_for_every_hedge_max_hedges_allows() {
    let reg = registry("[instances.s.hedge]\nmax_hedges = 5\nbudget_ratio = 1000\n");
    let s = reg.hedge("s").unwrap();
    fast_calls(&s, 1, 1).await;
    assert_eq!(failing(&s, 0).await, (Err(6), 6));
    assert_eq!(failing(&s, 0).await, (Err(6), 6));
}

// ---------------------------------------------------------------------------------------
// Threads: reloads racing calls
// ---------------------------------------------------------------------------------------

#[test]
fn calls_racing_reloads_on_another_thread_each_run_whole_under_one_setting() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let one = config("[instances.s.hedge]\ndelay = \"1h\"\nmax_hedges = 1\n");
    let three = config("[instances.s.hedge]\ndelay = \"1h\"\nmax_hedges = 3\n");
    let launched = Arc::new(AtomicUsize::new(0));
    let heard = Arc::clone(&launched);
    rt.block_on(async move {
        let reg = Arc::new(
            Registry::builder(one.clone())
                .on_event(move |event| {
                    if let EventKind::HedgeLaunched { .. } = event.kind {
                        heard.fetch_add(1, Ordering::Relaxed);
                    }
                })
                .build()
                .unwrap(),
        );
        let s = reg.hedge("s").unwrap();
        let reloader = {
            let reg = Arc::clone(&reg);
            std::thread::spawn(move || {
                for i in 0..2_000 {
                    let c = if i % 2 == 0 {
                        three.clone()
                    } else {
                        one.clone()
                    };
                    reg.reload(c).unwrap();
                }
            })
        };
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                let mut copies_seen = Vec::new();
                for _ in 0..500 {
                    let started = AtomicU32::new(0);
                    let answer = s
                        .call(Idempotent(|| {
                            let n = started.fetch_add(1, Ordering::Relaxed) + 1;
                            async move { Err::<u32, u32>(n) }
                        }))
                        .await;
                    let copies = started.load(Ordering::Relaxed);
                    assert_eq!(answer, Err(copies));
                    copies_seen.push(copies);
                    tokio::task::yield_now().await;
                }
                copies_seen
            }));
        }
        let mut total_hedges = 0;
        for t in tasks {
            for copies in t.await.unwrap() {
                assert!(
                    copies == 2 || copies == 4,
                    "a call mixed two settings: {copies} copies"
                );
                total_hedges += copies as usize - 1;
            }
        }
        reloader.join().unwrap();
        assert_eq!(
            launched.load(Ordering::Relaxed),
            total_hedges,
            "one event per hedge"
        );
        assert_eq!(s.hedge().max_hedges(), 1, "the last reload's");
    });
}

// ---------------------------------------------------------------------------------------
// Metrics (feature `metrics`)
// ---------------------------------------------------------------------------------------

#[cfg(feature = "metrics")]
mod metrics_counts {
    use super::*;
    use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

    /// Every counter of `policy="hedge"` named `name`, read at once (a snapshot drains the
    /// recorder's counters).
    fn counters(snapshotter: &Snapshotter, name: &str) -> (u64, u64) {
        let all: Vec<_> = snapshotter.snapshot().into_vec();
        let read = |metric: &str| counter(&all, metric, name);
        (
            read("tidewall_hedges_total"),
            read("tidewall_retry_budget_exhausted_total"),
        )
    }

    type Snap = Vec<(
        metrics_util::CompositeKey,
        Option<metrics::Unit>,
        Option<metrics::SharedString>,
        DebugValue,
    )>;

    fn counter(all: &Snap, metric: &str, name: &str) -> u64 {
        all.iter()
            .filter(|(key, _, _, _)| {
                let key = key.key();
                key.name() == metric
                    && key
                        .labels()
                        .any(|l| l.key() == "policy" && l.value() == "hedge")
                    && key.labels().any(|l| l.key() == "name" && l.value() == name)
            })
            .map(|(_, _, _, value)| match value {
                DebugValue::Counter(n) => *n,
                other => panic!("{metric}: {other:?}"),
            })
            .sum()
    }

    #[test]
    fn checking_a_configuration_with_hedges_registers_nothing() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            let c = config(
                "[defaults.hedge]\ndelay = \"10ms\"\n[configs.b.hedge]\nmax_hedges = 2\n\
                 [instances.s.hedge]\npercentile = 0.5\nbudget_ratio = 0.1\n",
            );
            c.validate().unwrap();
        });
        let names: Vec<String> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .map(|(key, _, _, _)| key.key().name().to_owned())
            .collect();
        assert!(names.is_empty(), "registered by a check: {names:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn hedges_and_budget_refusals_count_under_the_instance_name_across_reloads() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let reg = metrics::with_local_recorder(&recorder, || {
            Registry::new(config(
                "[instances.s.hedge]\ndelay = \"10ms\"\nmax_hedges = 2\n",
            ))
            .unwrap()
        });
        let s = reg.hedge("s").unwrap();
        assert_eq!(hedged(&s, |_| 100).await, (Ok(1), 3));
        assert_eq!(counters(&snapshotter, "s"), (2, 0));
        metrics::with_local_recorder(&recorder, || {
            reg.reload(config(
                "[instances.s.hedge]\ndelay = \"10ms\"\nmax_hedges = 3\n",
            ))
            .unwrap()
        });
        assert_eq!(hedged(&s, |_| 100).await, (Ok(1), 4));
        assert_eq!(
            counters(&snapshotter, "s"),
            (3, 0),
            "the reloaded hedge counts in the same series"
        );
        metrics::with_local_recorder(&recorder, || {
            reg.reload(config(
                "[instances.s.hedge]\ndelay = \"10ms\"\nmax_hedges = 1\nbudget_ratio = 0\n",
            ))
            .unwrap()
        });
        assert_eq!(failing(&s, 100).await, (Err(1), 1));
        assert_eq!(
            counters(&snapshotter, "s"),
            (0, 2),
            "refused at the delay, and again once every attempt failed"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Listener panics, failures, a dropped registry
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_registry_listener_that_panics_on_a_hedge_leaves_it_drawn_from_the_budget_and_unsent() {
    let panicking = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = Arc::clone(&panicking);
    let reg = Registry::builder(config(
        "[instances.s.hedge]\ndelay = \"50ms\"\nbudget_ratio = 0.1\n",
    ))
    .on_event(move |event| {
        if matches!(event.kind, EventKind::HedgeLaunched { .. }) && flag.load(Ordering::Relaxed) {
            panic!("listener");
        }
    })
    .build()
    .unwrap();
    let s = reg.hedge("s").unwrap();
    fast_calls(&s, 20, 1).await;
    panicking.store(true, Ordering::Relaxed);
    let copies = Arc::new(AtomicU32::new(0));
    let unwound = {
        let (s, copies) = (s.clone(), Arc::clone(&copies));
        tokio::spawn(async move {
            s.call(Idempotent(|| {
                let n = copies.fetch_add(1, Ordering::Relaxed) + 1;
                async move {
                    sleep(ms(stuck(n))).await;
                    Ok::<_, ()>(n)
                }
            }))
            .await
        })
        .await
    };
    assert!(
        unwound.unwrap_err().is_panic(),
        "the panic unwinds into the call"
    );
    assert_eq!(copies.load(Ordering::Relaxed), 1, "the hedge never ran");
    panicking.store(false, Ordering::Relaxed);
    // 20 calls (and these three) at 0.1: two hedges, one drawn by the panicking call.
    assert_eq!(hedged(&s, stuck).await, (Ok(2), 2));
    assert_eq!(
        hedged(&s, stuck).await,
        (Ok(1), 1),
        "the unsent hedge stayed drawn"
    );
    // The registry and the hedge are still whole.
    reg.reload(config("[instances.s.hedge]\ndelay = \"30ms\"\n"))
        .unwrap();
    assert_eq!(timed(&s, |_| 100).await, (Ok(1), vec![0, 30]));
}

#[tokio::test(start_paused = true)]
async fn failures_record_no_latency_for_the_estimate() {
    let reg =
        registry("[instances.s.hedge]\ndelay = \"300ms\"\npercentile = 0.5\nmin_samples = 3\n");
    let s = reg.hedge("s").unwrap();
    for _ in 0..5 {
        assert_eq!(failing(&s, 20).await, (Err(2), 2));
    }
    assert_eq!(s.hedge().delay(), 300 * MS, "no success, no sample");
    fast_calls(&s, 3, 20).await;
    assert_ne!(s.hedge().delay(), 300 * MS);
}

#[tokio::test(start_paused = true)]
async fn a_live_hedge_outlives_its_registry_with_the_last_settings() {
    let reg = registry("[instances.s.hedge]\ndelay = \"40ms\"\nmax_hedges = 1\n");
    let s = reg.hedge("s").unwrap();
    reg.reload(config(
        "[instances.s.hedge]\ndelay = \"25ms\"\nmax_hedges = 2\n",
    ))
    .unwrap();
    drop(reg);
    assert_eq!(timed(&s, |_| 100).await, (Ok(1), vec![0, 25, 50]));
}

#[tokio::test(start_paused = true)]
async fn a_running_call_keeps_its_estimate_when_a_reload_starts_a_new_one() {
    let text = |quantile: f64| {
        config(&format!(
            "[instances.s.hedge]\ndelay = \"400ms\"\nmax_hedges = 3\npercentile = {quantile}\nmin_samples = 5\n"
        ))
    };
    let reg = Registry::new(text(0.5)).unwrap();
    let s = reg.hedge("s").unwrap();
    fast_calls(&s, 5, 20).await;
    let learned = s.hedge().delay();
    assert!(learned < 400 * MS);
    let running = spawn_slow_call(&s);
    sleep(5 * MS).await;
    reg.reload(text(0.9)).unwrap();
    assert_eq!(
        s.hedge().delay(),
        400 * MS,
        "a new estimate for the next calls"
    );
    let (answer, starts) = running.await.unwrap();
    assert_eq!(answer, Ok(1));
    assert_eq!(starts.len(), 4);
    let step = learned.as_millis() as u64;
    for (k, &at) in starts.iter().enumerate() {
        let want = k as u64 * step;
        assert!(
            at >= want && at <= want + 1 + k as u64,
            "hedge {k} at {at} ms, the estimate it started with is {learned:?}: {starts:?}"
        );
    }
}

#[test]
fn undeclared_hedges_made_while_reloads_race_all_end_on_the_configuration_in_force() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let text = |d: u64| config(&format!("[defaults.hedge]\ndelay = \"{d}ms\"\n"));
    let reg = Arc::new(Registry::new(text(10)).unwrap());
    // 151 reloads alternating 10 ms and 11 ms: the last (index 150) is 10 ms.
    let configs: Vec<Config> = (0..151).map(|i| text(10 + i % 2)).collect();
    let last = 10;
    let reloader = {
        let reg = Arc::clone(&reg);
        std::thread::spawn(move || {
            for c in configs {
                reg.reload(c).unwrap();
            }
        })
    };
    let makers: Vec<_> = (0..2)
        .map(|t| {
            let reg = Arc::clone(&reg);
            std::thread::spawn(move || {
                for i in 0..300 {
                    reg.hedge(&format!("t{t}-{i}")).unwrap();
                }
            })
        })
        .collect();
    reloader.join().unwrap();
    for m in makers {
        m.join().unwrap();
    }
    let stale: Vec<String> = reg
        .hedges()
        .into_iter()
        .filter(|(_, h)| h.hedge().delay() != ms(last))
        .map(|(n, h)| format!("{}: {:?}", n.as_ref(), h.hedge().delay()))
        .collect();
    assert_eq!(reg.hedges().len(), 600);
    assert!(
        stale.is_empty(),
        "made during a reload, missed by it: {stale:?}"
    );
}

#[test]
fn undeclared_hedges_made_from_many_threads_never_pass_max_instances() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let reg = Arc::new(
        Registry::builder(config("[instances.a.hedge]\n[instances.b.breaker]\n"))
            .max_instances(20)
            .build()
            .unwrap(),
    );
    let made = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (reg, made) = (Arc::clone(&reg), Arc::clone(&made));
            std::thread::spawn(move || {
                for i in 0..200 {
                    match reg.hedge(&format!("t{t}-{i}")) {
                        Ok(_) => {
                            made.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => assert_eq!(e.problem(), &Problem::Full { max: 20 }),
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(
        made.load(Ordering::Relaxed),
        18,
        "20 places, 2 kept for a and b"
    );
    assert!(reg.hedge("b").is_ok(), "b's place was kept");
    assert_eq!(reg.hedges().len(), 20);
}

#[tokio::test(start_paused = true)]
async fn min_samples_beside_an_off_percentile_waits_for_the_layer_that_turns_it_on() {
    let reg = registry(
        "[defaults.hedge]\ndelay = \"300ms\"\npercentile = \"off\"\nmin_samples = 3\n\
         [instances.on.hedge]\npercentile = 0.5\n\
         [instances.off.hedge]\n",
    );
    let (on, off) = (reg.hedge("on").unwrap(), reg.hedge("off").unwrap());
    fast_calls(&on, 2, 20).await;
    assert_eq!(on.hedge().delay(), 300 * MS);
    fast_calls(&on, 1, 20).await;
    assert_ne!(
        on.hedge().delay(),
        300 * MS,
        "the defaults' min_samples, used at last"
    );
    fast_calls(&off, 10, 20).await;
    assert_eq!(off.hedge().delay(), 300 * MS);
    assert!(
        reg.hedge("undeclared").is_ok(),
        "off in the defaults: accepted for any name"
    );
}

#[tokio::test(start_paused = true)]
async fn a_defaults_min_samples_is_judged_only_for_the_names_that_take_a_hedge() {
    // `a` has no hedge section: the defaults do not fill one in, so the file is fine...
    let reg = registry("[defaults.hedge]\nmin_samples = 10\n[instances.a.breaker]\n");
    // ...until a hedge is asked for on those layers alone.
    let e = reg.hedge("a").unwrap_err();
    assert_eq!(e.path(), "defaults.hedge.min_samples", "{e}");
    assert!(reg.hedges().is_empty());
    // A reload that gives `a` a percentile makes it valid.
    reg.reload(config(
        "[defaults.hedge]\nmin_samples = 10\n[instances.a.breaker]\n[instances.a.hedge]\npercentile = 0.5\n",
    ))
    .unwrap();
    assert!(reg.hedge("a").is_ok());
}

#[test]
fn a_hedge_section_survives_a_serde_round_trip_exactly() {
    let text = "[defaults.hedge]\ndelay = \"18446744073709551615ns\"\npercentile = \"off\"\nmin_samples = 7\n\
                [configs.b.hedge]\nbudget_ratio = \"off\"\nmax_hedges = 4294967294\n\
                [instances.a]\nbase = \"b\"\n[instances.a.hedge]\ndelay = \"1ns\"\npercentile = 0.95\nbudget_ratio = 0.000001\n\
                [instances.c.hedge]\npercentile = 1.0\nmin_samples = 9223372036854775807\nbudget_ratio = 1000\ndelay = \"1h 30m\"\n";
    let c = config(text);
    let json = serde_json::to_string(&c).unwrap();
    let back: Config = serde_json::from_str(&json).unwrap();
    back.validate().unwrap();
    assert_eq!(back, c, "{json}");
    let a = back.instances["a"].hedge.as_ref().unwrap();
    assert_eq!(
        (a.delay, a.percentile, a.budget_ratio),
        (
            Some(Duration::from_nanos(1)),
            Some(Toggle::On(0.95)),
            Some(Toggle::On(0.000_001))
        )
    );
    assert_eq!(
        back.defaults.hedge.as_ref().unwrap().percentile,
        Some(Toggle::Off)
    );
}

#[test]
fn concurrent_calls_across_reloads_never_overdraw_the_one_budget() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let text = |delay: u64| {
        config(&format!(
            "[instances.s.hedge]\ndelay = \"{delay}ms\"\nmax_hedges = 3\nbudget_ratio = 0.1\n"
        ))
    };
    let launched = Arc::new(AtomicUsize::new(0));
    let heard = Arc::clone(&launched);
    rt.block_on(async move {
        let reg = Arc::new(
            Registry::builder(text(1_000))
                .on_event(move |event| {
                    if let EventKind::HedgeLaunched { .. } = event.kind {
                        heard.fetch_add(1, Ordering::Relaxed);
                    }
                })
                .build()
                .unwrap(),
        );
        let s = reg.hedge("s").unwrap();
        // 20 calls that need no hedge.
        for _ in 0..20 {
            let answer = s.call(Idempotent(|| async { Ok::<_, ()>(()) })).await;
            assert_eq!(answer, Ok(()));
        }
        let reloader = {
            let reg = Arc::clone(&reg);
            std::thread::spawn(move || {
                for i in 0..200 {
                    reg.reload(text(900 + i % 2)).unwrap();
                }
            })
        };
        // 60 calls that fail at once, each asking for every hedge it may send.
        let tasks: Vec<_> = (0..60)
            .map(|_| {
                let s = s.clone();
                tokio::spawn(
                    async move { s.call(Idempotent(|| async { Err::<(), ()>(()) })).await },
                )
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap(), Err(()));
        }
        reloader.join().unwrap();
    });
    let hedges = launched.load(Ordering::Relaxed);
    assert!(
        (1..=8).contains(&hedges),
        "80 calls at 0.1 pay for 8 hedges at the most, got {hedges}"
    );
}
